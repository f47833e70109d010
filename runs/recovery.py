"""The sweep: celery beat runs it every DURABLE_SWEEP_INTERVAL seconds.

It is what makes the database the source of truth. Whatever the broker lost or
a dead worker left behind, the sweep finds it from the database alone: orphaned
runs and branches (lease lapsed), waiting ones that are due, runs whose signal,
child or branches have arrived, queued runs with a free slot, and pending work
whose doorbell went unanswered. Every change it makes is a conditional update,
so two sweeps at once are safe.

Wake-ups are set-based: one UPDATE wakes up to WAKE_BATCH runs, the most overdue
first, and a sweep takes batches until its budget is spent. On PostgreSQL a batch
skips rows another transaction holds (two sweeps take disjoint batches) and gives
up on any lock after LOCK_TIMEOUT instead of waiting; the next sweep retries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from runs import dispatch
from runs.models import ACTIVE_STATUSES, ARRIVALS, Run, WorkerProcess
from steps.models import Branch, BranchStatus
from steps.ratelimit import forget_old_grants

log = logging.getLogger(__name__)

BATCH = 500
# Runs woken per statement, and how much of a sweep waking may take: at least one
# batch per source, then more while batches come back full and the budget lasts.
WAKE_BATCH = 1000
WAKE_BATCHES_PER_SWEEP = 10
WAKE_BUDGET = 0.25  # seconds; the sweep runs every DURABLE_SWEEP_INTERVAL (0.5 s)
# How long a maintenance statement may wait for a lock (PostgreSQL's lock_timeout).
LOCK_TIMEOUT = "100ms"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout


@dataclass
class SweepReport:
    recovered: int = 0
    dead_lettered: int = 0
    woken: int = 0
    admitted: int = 0
    redispatched: int = 0
    branches_recovered: int = 0
    branches_woken: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())


def sweep() -> SweepReport:
    report = SweepReport()
    _sweep_runs(report)
    _sweep_branches(report)
    for workflow in Run.objects.queued_workflows():
        report.admitted += Run.objects.admit(workflow)
    WorkerProcess.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(days=1)).delete()
    forget_old_grants()
    if report:
        log.info("sweep: %s", report)
    return report


def _sweep_runs(report: SweepReport) -> None:
    fields = ("pk", "lease_token", "queue", "workflow")
    for run in Run.objects.orphaned().only(*fields)[:BATCH]:
        outcome = run.recover("worker process stopped heartbeating")
        if outcome == "pending":
            report.recovered += 1
        elif outcome == "dead":
            report.dead_lettered += 1
    _wake_runs(report)
    for run in Run.objects.unanswered().only(*fields, "dispatched_at", "updated_at")[:BATCH]:
        report.redispatched += run.redispatch()


def _wake_runs(report: SweepReport) -> None:
    # Runs whose signal, child or branches arrived first: few, and waited on by
    # someone; then the timed wake-ups, which may be a flood.
    sources = [partial(Run.objects.wake_arrived, source) for source in ARRIVALS]
    sources.append(lambda limit: Run.objects.due_to_wake().wake_batch(limit))
    deadline = time.monotonic() + WAKE_BUDGET
    batches = 0
    for wake in sources:
        while True:
            woken = _wake_batch(wake)
            report.woken += woken
            batches += 1
            out_of_budget = batches >= WAKE_BATCHES_PER_SWEEP or time.monotonic() >= deadline
            if woken < WAKE_BATCH or out_of_budget:
                break


def _wake_batch(wake: Callable[[int], list[int]]) -> int:
    try:
        with transaction.atomic():
            _no_lock_waits()
            return len(wake(WAKE_BATCH))
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        log.info("sweep: a wake-up batch met a lock and was skipped; the next sweep retries it: %s", exc)
        return 0


def _no_lock_waits() -> None:
    """Inside a maintenance transaction: fail a statement rather than queue for a lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])


def _sweep_branches(report: SweepReport) -> None:
    from runs.fanout import wake_parent_if_settled

    live = Branch.objects.live().filter(run__status__in=list(ACTIVE_STATUSES)).select_related("run")
    fields = ("pk", "run_id", "run__queue", "position", "lease_token", "dispatched_at")
    cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
    alive = WorkerProcess.objects.filter(heartbeat_at__gte=cutoff).values("name")
    orphaned = live.filter(status=BranchStatus.RUNNING).exclude(lease_owner__in=alive)
    for branch in orphaned.only(*fields)[:BATCH]:
        outcome = branch.recover(settings.DURABLE_MAX_RECOVERIES)
        if outcome == BranchStatus.PENDING:
            report.branches_recovered += 1
            _ring(branch)
        elif outcome == BranchStatus.FAILED:
            wake_parent_if_settled(branch)
    due = live.filter(status=BranchStatus.WAITING, wake_at__lte=timezone.now())
    for branch in due.only(*fields)[:BATCH]:
        if branch.wake():
            report.branches_woken += 1
            _ring(branch)
    redispatch_cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_REDISPATCH_AFTER)
    unanswered = live.filter(status=BranchStatus.PENDING, dispatched_at__lt=redispatch_cutoff)
    for branch in unanswered.only(*fields)[:BATCH]:
        if branch.redispatch():
            report.redispatched += 1
            _ring(branch)


def _ring(branch: Branch) -> None:
    with transaction.atomic():
        dispatch.ring_branch_on_commit(branch.pk, branch.run.queue)


def recover_lost_process_run(run_id: int, token: str) -> str | None:
    """A prefork child died holding this run: take it back now, without waiting for the lease."""
    run = (
        Run.objects.filter(pk=run_id, lease_token=token)
        .only("pk", "lease_token", "queue", "workflow")
        .first()
    )
    if run is None:
        return None
    return run.recover("worker process died mid-step")


def recover_lost_process_branch(branch_id: int, token: str) -> str | None:
    branch = Branch.objects.filter(pk=branch_id, lease_token=token).select_related("run").first()
    if branch is None:
        return None
    outcome = branch.recover(settings.DURABLE_MAX_RECOVERIES)
    if outcome == BranchStatus.PENDING:
        _ring(branch)
    return outcome
