"""The project's URLs plus one view that raises, for tests of what a server error leaves behind."""

from django.urls import include, path


def boom(request):
    raise RuntimeError("boom, for the log")


urlpatterns = [path("boom/", boom), path("", include("config.urls"))]
