"""Periodic upkeep tasks for celery beat (see DURABLE_PRUNE_* in config/settings.py).

Celery autodiscovers only `tasks` modules; api/tasks.py imports this one so that
every worker registers these tasks.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from runs import retention

log = logging.getLogger(__name__)


@shared_task(name="runs.prune", ignore_result=True)
def prune() -> str:
    """Delete finished runs of DURABLE_PRUNE_STATUSES (succeeded and cancelled unless set)
    older than DURABLE_PRUNE_OLDER_THAN; off when it is unset."""
    older_than = settings.DURABLE_PRUNE_OLDER_THAN
    if older_than is None:
        return "pruning is off (DURABLE_PRUNE_OLDER_THAN is not set)"
    report = retention.prune(
        older_than,
        statuses=settings.DURABLE_PRUNE_STATUSES,
        batch_size=settings.DURABLE_PRUNE_BATCH_SIZE,
        by="beat",
    )
    return str(report)
