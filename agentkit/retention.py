"""Billing retention: provider calls outlive their runs and go on their own schedule.

Pruning a run keeps its calls (their run link is cleared): they are what the
providers bill, and invoices are reconciled long after runs stop mattering. Calls
older than DURABLE_BILLING_RETENTION are deleted by beat (unset: kept for ever), or
by hand with `manage.py billing prune --older-than 400d`. Each batch is one short
transaction deleting up to `batch_size` of the oldest calls before the cutoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from agentkit.models import ProviderCall
from runs.models import AuditEntry

log = logging.getLogger(__name__)

# Calls are small rows with no dependents: batches can be larger than runs'.
DEFAULT_BATCH_SIZE = 5000


@dataclass
class BillingPruneReport:
    cutoff: datetime
    dry_run: bool
    calls: int = 0
    cost_usd: float = 0.0
    batches: int = 0

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        calls = f"{self.calls} provider call" + ("" if self.calls == 1 else "s")
        return (
            f"{verb} {calls} made before {self.cutoff:%Y-%m-%d %H:%M:%S %Z} "
            f"(${self.cost_usd:.2f} billed)" + ("" if self.dry_run else f", in {self.batches} batches")
        )

    def add(self, totals: dict) -> None:
        self.calls += totals["calls"]
        self.cost_usd += totals["cost_usd"] or 0.0


def prune_calls(
    older_than: timedelta, *, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False, by=None
) -> BillingPruneReport:
    """Delete provider calls made more than `older_than` ago."""
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    cutoff = timezone.now() - older_than
    report = BillingPruneReport(cutoff=cutoff, dry_run=dry_run)
    old = ProviderCall.objects.filter(created_at__lt=cutoff)
    if dry_run:
        report.add(totals(old))
        return report
    while True:
        with transaction.atomic():
            ids = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if ids:
                batch = ProviderCall.objects.filter(pk__in=ids)
                report.add(totals(batch))
                batch.delete()
        report.batches += 1 if ids else 0
        if len(ids) < batch_size:
            break
    if report.calls:
        AuditEntry.record(
            None,
            "prune billing",
            by,
            details={
                "older_than_seconds": older_than.total_seconds(),
                "provider_calls": report.calls,
                "cost_usd": round(report.cost_usd, 8),
            },
        )
    log.info("prune billing: %s", report)
    return report


def totals(calls) -> dict:
    return calls.order_by().aggregate(calls=Count("pk"), cost_usd=Sum("cost_usd"))
