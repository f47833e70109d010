from django.urls import path

from runs import bulk_views, deploy_views, inbox, list_refresh, run_actions, start_page, views, workers_page

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("runs/rows/", list_refresh.run_rows, name="run_rows"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/<int:run_id>/decide/", inbox.inbox_decide, name="inbox_decide"),
    path("workers/", workers_page.workers, name="workers"),
    path("start/", start_page.start_run, name="start_run"),
    path("overview/", views.run_overview, name="run_overview"),
    path("deploys/check/", deploy_views.deploy_check, name="deploy_check"),
    path("runs/bulk/", views.run_bulk, name="run_bulk"),
    path("runs/bulk/steps/", views.run_bulk_steps, name="run_bulk_steps"),
    path("runs/recover/", bulk_views.recover, name="run_recover"),
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
        "runs/<int:run_id>/steps/<int:position>/edit-and-continue/",
        run_actions.checkpoint_edit_and_continue,
        name="checkpoint_edit_and_continue",
    ),
    path("runs/<int:run_id>/retry-now/", run_actions.run_retry_now, name="run_retry_now"),
    path(
        "runs/<int:run_id>/checkpoints/<int:checkpoint_id>/",
        views.checkpoint_detail,
        name="checkpoint_detail",
    ),
]
