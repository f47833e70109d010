"""The sweep: celery beat runs it every DURABLE_SWEEP_INTERVAL seconds.

It is what makes the database the source of truth. Whatever the broker lost or
a dead worker left behind, the sweep finds it from the database alone: orphaned
runs and branches (lease lapsed), waiting ones that are due, runs whose signal,
child or branches have arrived, queued runs with a free slot, and pending work
whose doorbell went unanswered. Every change it makes is a conditional update,
so two sweeps at once are safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from runs import dispatch
from runs.models import ACTIVE_STATUSES, Run, SweepClock, WorkerProcess
from steps.models import Branch, BranchStatus
from steps.ratelimit import forget_old_grants

log = logging.getLogger(__name__)

BATCH = 500


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
    if SweepClock.steady():
        _recover_orphaned_runs(report)
        _recover_orphaned_branches(report)
    _sweep_runs(report)
    _sweep_branches(report)
    for workflow in Run.objects.queued_workflows():
        report.admitted += Run.objects.admit(workflow)
    WorkerProcess.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(days=1)).delete()
    forget_old_grants()
    if report:
        log.info("sweep: %s", report)
    return report


def _recover_orphaned_runs(report: SweepReport) -> None:
    """Runs whose holder fell silent: each is taken back unless its row is locked."""
    for run in Run.objects.orphaned().order_by("updated_at")[:BATCH]:
        try:
            outcome = run.recover("its worker process stopped heartbeating")
        except DatabaseError:  # lock or statement timeout: the next sweep tries again
            log.info("sweep: could not recover run %s now", run.pk, exc_info=True)
            continue
        if outcome == "pending":
            report.recovered += 1
        elif outcome == "dead":
            report.dead_lettered += 1


def _recover_orphaned_branches(report: SweepReport) -> None:
    cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
    alive = WorkerProcess.objects.filter(heartbeat_at__gte=cutoff).values("name")
    orphaned = (
        Branch.objects.live()
        .filter(status=BranchStatus.RUNNING, run__status__in=list(ACTIVE_STATUSES))
        .exclude(lease_owner__in=alive)
        .select_related("run")
    )
    for branch in orphaned[:BATCH]:
        try:
            if recover_branch(branch) == BranchStatus.PENDING:
                report.branches_recovered += 1
        except DatabaseError:
            log.info("sweep: could not recover branch %s now", branch.pk, exc_info=True)


def _sweep_runs(report: SweepReport) -> None:
    fields = ("pk", "lease_token", "queue", "workflow")
    wakeable = [
        Run.objects.due_to_wake(),
        Run.objects.signalled_while_waiting(),
        Run.objects.waiting_on_finished_children(),
        Run.objects.waiting_on_finished_branches(),
    ]
    for candidates in wakeable:
        for run in candidates.only(*fields)[:BATCH]:
            report.woken += run.wake()
    for run in Run.objects.unanswered().only(*fields, "dispatched_at", "updated_at")[:BATCH]:
        report.redispatched += run.redispatch()


def _sweep_branches(report: SweepReport) -> None:

    live = Branch.objects.live().filter(run__status__in=list(ACTIVE_STATUSES)).select_related("run")
    fields = ("pk", "run_id", "run__queue", "position", "lease_token", "dispatched_at")
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


def recover_branch(branch: Branch) -> str | None:
    """Take a branch back from its lost holder: dispatch it again, or fail it for good."""
    from runs.fanout import wake_parent_if_settled

    outcome = branch.recover(settings.DURABLE_MAX_RECOVERIES)
    if outcome == BranchStatus.PENDING:
        _ring(branch)
    elif outcome == BranchStatus.FAILED:
        wake_parent_if_settled(branch)
    return outcome
