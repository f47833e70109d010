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
from django.db import transaction
from django.utils import timezone

from runs import dispatch
from runs.models import ACTIVE_STATUSES, Run, WorkerProcess
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
