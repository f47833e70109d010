"""Everything the product serves, for one `include()`: the dashboard, schedules,
notifications, the JSON API and /metrics. A project mounts it under any prefix
(`path("ops/runs/", include("runs.site_urls"))`); the standalone project at the root."""

from django.urls import include, path

urlpatterns = [
    path("api/", include("api.urls")),
    path("metrics", include("api.metrics_urls")),
    path("schedules/", include("schedules.urls")),
    path("notifications/", include("notifications.urls")),
    path("", include("runs.urls")),
]
