# Django and Celery's usual arrangement: the Celery app is made when Django starts, so that
# the engine's tasks are sent through it.
from hostsite.celery import app as celery_app

__all__ = ["celery_app"]
