"""The sweep: celery beat runs it every DURABLE_SWEEP_INTERVAL seconds.

It is what makes the database the source of truth. Whatever the broker lost or
a dead worker left behind, the sweep finds it from the database alone:
orphaned runs (lease lapsed), waiting runs that are due, waiting runs whose
signal has arrived, and pending runs whose doorbell went unanswered.
Every change it makes is a conditional update, so two sweeps at once are safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from runs.models import Run, WorkerProcess

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    recovered: int = 0
    dead_lettered: int = 0
    woken: int = 0
    redispatched: int = 0

    def __bool__(self) -> bool:
        return any((self.recovered, self.dead_lettered, self.woken, self.redispatched))


def sweep() -> SweepReport:
    report = SweepReport()
    for run in Run.objects.orphaned().only("pk", "lease_token", "queue")[:BATCH]:
        outcome = run.recover("worker process stopped heartbeating")
        if outcome == "pending":
            report.recovered += 1
        elif outcome == "dead":
            report.dead_lettered += 1
    for run in Run.objects.due_to_wake().only("pk", "queue")[:BATCH]:
        report.woken += run.wake()
    for run in Run.objects.signalled_while_waiting().only("pk", "queue")[:BATCH]:
        report.woken += run.wake()
    for run in Run.objects.unanswered().only("pk", "queue", "dispatched_at")[:BATCH]:
        report.redispatched += run.redispatch()
    WorkerProcess.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(days=1)).delete()
    if report:
        log.info("sweep: %s", report)
    return report


def recover_lost_process_run(run_id: int, token: str) -> str | None:
    """A prefork child died holding this run: take it back now, without waiting for the lease."""
    run = Run.objects.filter(pk=run_id, lease_token=token).only("pk", "lease_token", "queue").first()
    if run is None:
        return None
    return run.recover("worker process died mid-step")
