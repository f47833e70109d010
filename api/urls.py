from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from api import views

app_name = "api"

urlpatterns = [
    # Read like the API, signed in, in any project: the schema lists the workflows.
    path(
        "schema/",
        SpectacularAPIView.as_view(
            permission_classes=[views.CanView], authentication_classes=views.POLICY["authentication_classes"]
        ),
        name="schema",
    ),
    path("workflows/", views.workflows, name="workflows"),
    path("runs/", views.runs, name="runs"),
    path("runs/bulk/", views.runs_bulk, name="runs-bulk"),
    path("runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<int:run_id>/export/", views.run_export, name="run-export"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run-resume"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="run-retry"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/terminate/", views.run_terminate, name="run-terminate"),
    path("runs/<int:run_id>/signal/", views.run_signal, name="run-signal"),
    path("runs/<int:run_id>/edit/", views.run_edit, name="run-edit"),
    path("runs/<int:run_id>/edit-and-continue/", views.run_edit_and_continue, name="run-edit-and-continue"),
    path("runs/<int:run_id>/retry-now/", views.run_retry_now, name="run-retry-now"),
    # Anything else under /api/ is a JSON 404, not the dashboard's HTML page.
    re_path(r"", views.not_found),
]
