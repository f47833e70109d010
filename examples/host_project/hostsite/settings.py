"""An existing Django project that adds durable runs: what it sets for them is marked
"durable runs"; everything else is what `django-admin startproject` writes."""

import os
from pathlib import Path

from runs.broker import transport_options
from runs.conf import BEAT_SCHEDULE

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EXAMPLE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("SECRET_KEY", "example-project-only-not-a-secret")
DEBUG = os.environ.get("DEBUG", "") == "true"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # durable runs: the apps, and the ones they build on
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "runs",
    "steps",
    "schedules",
    "notifications",
    "agentkit",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",  # durable runs: the dashboard reads request.htmx
]

ROOT_URLCONF = "hostsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # templates/runs/base.html here overrides the dashboard's base (a link back to the shop).
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "runs.views.inbox.navigation",  # durable runs: the navigation's inbox count
            ],
        },
    },
]

# SQLite, as several processes (web, worker) write it: WAL, and transactions that take the
# write lock at once instead of failing to upgrade to it. PostgreSQL needs nothing special.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "login"

# Celery: the embedded broker (a folder; no server). A Redis or RabbitMQ URL works too.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT = "runs.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = transport_options(VAR_DIR / "broker")
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE = {**BEAT_SCHEDULE}  # durable runs: notifications, schedules, pruning
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# durable runs: only what differs from runs.conf's defaults. Workers consume the queue runs
# go to (DURABLE_QUEUE, "durable") and Celery's default one: celery -Q durable,celery.
DURABLE_WORKFLOW_MODULES = ["hostsite.workflows"]
