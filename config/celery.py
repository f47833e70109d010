import os

from celery import Celery

from runs.bootsteps import LivenessSupervisor, PromptChildLossReports

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("durable")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(PromptChildLossReports)
app.steps["worker"].add(LivenessSupervisor)
