from django.urls import path

from runs import deploy_views, views

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("runs/rows/", views.run_rows, name="run_rows"),
    path("overview/", views.run_overview, name="run_overview"),
    path("deploys/check/", deploy_views.deploy_check, name="deploy_check"),
    path("runs/bulk/", views.run_bulk, name="run_bulk"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/live/", views.run_live, name="run_live"),
    path("runs/<int:run_id>/value/<str:part>/", views.run_value, name="run_value"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run_resume"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:run_id>/terminate/", views.run_terminate, name="run_terminate"),
    path("runs/<int:run_id>/signal/", views.run_signal, name="run_signal"),
    path("runs/<int:run_id>/steps/<int:position>/", views.run_step, name="run_step"),
    path("runs/<int:run_id>/steps/<int:position>/retry/", views.run_retry, name="run_retry"),
    path("runs/<int:run_id>/steps/<int:position>/edit/", views.checkpoint_edit, name="checkpoint_edit"),
    path(
        "runs/<int:run_id>/checkpoints/<int:checkpoint_id>/",
        views.checkpoint_detail,
        name="checkpoint_detail",
    ),
]
