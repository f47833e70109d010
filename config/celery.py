import os

from celery import Celery

import runs.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("durable")
app.config_from_object("django.conf:settings", namespace="CELERY")
runs.celery.configure(app)
app.autodiscover_tasks()
