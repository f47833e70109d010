"""The project's own Celery app: three lines beyond Celery's usual Django setup."""

import os

from celery import Celery

import runs.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostsite.settings")

app = Celery("hostsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
runs.celery.configure(app)  # the engine's worker bootsteps and options
app.autodiscover_tasks()  # finds runs.tasks, schedules.tasks, notifications.tasks, ...
