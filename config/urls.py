from django.contrib import admin
from django.urls import include, path

from runs.accounts import LoginView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    # The JSON API (issue 6) mounts itself here.
    path("api/", include("api.urls")),
    path("metrics", include("api.metrics_urls")),
    path("", include("runs.urls")),
]
