from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path


def home(request):
    return HttpResponse('The shop. Its agent runs are at <a href="/ops/runs/">/ops/runs/</a>.')


urlpatterns = [
    path("", home, name="home"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),  # login and logout, which the dashboard links to
    path("ops/runs/", include("runs.site_urls")),  # durable runs: the dashboard, the API and /metrics
]
