from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    # The JSON API (issue 6) mounts itself here.
    path("", include("runs.urls")),
]
