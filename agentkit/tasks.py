"""Billing retention for celery beat (DURABLE_BILLING_RETENTION in config/settings.py)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from agentkit import retention


@shared_task(name="agents.prune_billing", ignore_result=True)
def prune_billing() -> str:
    """Delete provider calls older than DURABLE_BILLING_RETENTION; off (kept for ever) when unset."""
    older_than = settings.DURABLE_BILLING_RETENTION
    if older_than is None:
        return "billing records are kept for ever (DURABLE_BILLING_RETENTION is not set)"
    return str(retention.prune_calls(older_than, by="beat"))
