"""The sweep: every worker's main process runs it every DURABLE_SWEEP_INTERVAL seconds.

It is what makes the database the source of truth. Whatever the broker lost or
a dead worker left behind, the sweep finds it from the database alone: orphaned
runs and branches (lease lapsed), waiting ones that are due, runs whose signal,
child or branches have arrived, queued runs with a free slot, and pending work
whose doorbell went unanswered. Every change it makes is a conditional update,
so two sweeps at once are safe.

Wake-ups are set-based: one UPDATE wakes up to WAKE_BATCH runs, the most overdue
first, and a sweep takes batches until its budget is spent. On PostgreSQL a batch
skips rows another transaction holds (two sweeps take disjoint batches) and gives
up on any lock after DURABLE_MAINTENANCE_LOCK_TIMEOUT instead of waiting (runs.flow
.maintenance); the next sweep retries it. Recoveries skip locked rows the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from runs import dispatch
from runs.flow import maintenance
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
# SQLSTATEs of a lock_timeout and a statement_timeout: the batch is skipped, not failed.
GAVE_UP = frozenset({"55P03", "57014"})


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


class Steadiness:
    """Whether this process's sweeps have come without a gap for a lease timeout.

    After a gap (a sweep that failed: a database outage, or a paused process) nobody could
    beat either: the sweep waits one lease timeout for the living to beat again before it
    calls anyone dead. A process that has not swept yet has seen no gap. Kept per process:
    every worker's main process has one sweeper thread.
    """

    def __init__(self):
        self.fresh = True
        self.last_ok: float | None = None
        self.since: float | None = None

    @staticmethod
    def gap() -> float:
        return max(settings.DURABLE_LEASE_TIMEOUT, 3 * settings.DURABLE_SWEEP_INTERVAL)

    def steady(self) -> bool:
        if self.fresh:
            return True
        now = time.monotonic()
        return (
            self.last_ok is not None
            and now - self.last_ok <= self.gap()
            and self.since is not None
            and now - self.since >= self.gap()
        )

    def completed(self) -> None:
        now = time.monotonic()
        if self.fresh:
            self.since, self.fresh = now - self.gap(), False
        elif self.last_ok is None or now - self.last_ok > self.gap():
            self.since = now
        self.last_ok = now

    def broken(self) -> None:
        """A sweep failed: whatever comes next comes after a gap."""
        self.fresh, self.last_ok = False, None


steadiness = Steadiness()
sweeps = 0  # in this process
TIDY_EVERY = 20  # sweeps between two rounds of housekeeping


def sweep() -> SweepReport:
    try:
        report = _sweep()
    except BaseException:
        steadiness.broken()
        raise
    steadiness.completed()
    if report:
        log.info("sweep: %s", report)
    return report


def _sweep() -> SweepReport:
    report = SweepReport()
    if steadiness.steady():
        _recover_orphaned_runs(report)
        _recover_orphaned_branches(report)
    _sweep_runs(report)
    _sweep_branches(report)
    for workflow in Run.objects.queued_workflows():
        admit = partial(Run.objects.admit, workflow)
        report.admitted += _without_waiting(admit, f"admission of {workflow}") or 0
    global sweeps
    sweeps += 1
    if sweeps % TIDY_EVERY == 1:  # housekeeping: a day-old worker row, old rate-limit grants
        WorkerProcess.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(days=1)).delete()
        forget_old_grants()
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
    alive = WorkerProcess.alive_names()
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
    _wake_runs(report)
    fields = ("pk", "lease_token", "queue", "workflow", "dispatched_at", "updated_at")
    unanswered = list(Run.objects.unanswered().only(*fields)[:BATCH])
    served = WorkerProcess.served_queues() if unanswered else None
    if served is not None and any(run.queue not in served for run in unanswered):
        # No live worker consumes some of these: another doorbell would only pile up there.
        # Ask again for served queues only, so a backlog on an unserved queue cannot fill
        # the batch and keep the served queues' runs from their doorbells.
        unanswered = list(Run.objects.unanswered().filter(queue__in=served).only(*fields)[:BATCH])
    for run in unanswered:
        report.redispatched += bool(_without_waiting(run.redispatch, f"run {run.pk}"))


def _without_waiting(change: Callable[[], Any], what: str) -> Any:
    """Make a change in a maintenance transaction; None if it met a lock and gave up.

    The lock's holder may be frozen: the next sweep tries again instead of queueing.
    """
    try:
        with maintenance():
            return change()
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) not in GAVE_UP:
            raise
        log.info("sweep: %s met a lock and was skipped; the next sweep tries again", what)
        return None


def _wake_runs(report: SweepReport) -> None:
    # Runs whose signal, child or branches arrived first: few, and waited on by
    # someone; then the timed wake-ups, which may be a flood. The first batch of every
    # source shares one transaction (a sweep with nothing due costs one round of them);
    # a source whose batch came back full goes on in batches of its own.
    sources = [partial(Run.objects.wake_arrived, source) for source in ARRIVALS]
    sources.append(lambda limit: Run.objects.due_to_wake().wake_batch(limit))
    deadline = time.monotonic() + WAKE_BUDGET
    firsts = _without_waiting(lambda: [len(wake(WAKE_BATCH)) for wake in sources], "a wake-up batch")
    if firsts is None:  # one source met a lock: give the others their own transactions
        firsts = [
            _without_waiting(lambda w=wake: len(w(WAKE_BATCH)), "a wake-up batch") or 0 for wake in sources
        ]
    report.woken += sum(firsts)
    batches = len(sources)
    for wake, first in zip(sources, firsts, strict=True):
        woken = first
        while woken == WAKE_BATCH and batches < WAKE_BATCHES_PER_SWEEP and time.monotonic() < deadline:
            woken = _without_waiting(lambda w=wake: len(w(WAKE_BATCH)), "a wake-up batch") or 0
            report.woken += woken
            batches += 1


def _sweep_branches(report: SweepReport) -> None:
    live = Branch.objects.live().filter(run__status__in=list(ACTIVE_STATUSES)).select_related("run")
    fields = ("pk", "run_id", "run__queue", "position", "lease_token", "dispatched_at")
    due = live.filter(status=BranchStatus.WAITING, wake_at__lte=timezone.now())
    for branch in due.only(*fields)[:BATCH]:
        if _without_waiting(branch.wake, f"branch {branch.pk}"):
            report.branches_woken += 1
            _ring(branch)
    redispatch_cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_REDISPATCH_AFTER)
    unanswered = live.filter(status=BranchStatus.PENDING, dispatched_at__lt=redispatch_cutoff)
    for branch in unanswered.only(*fields)[:BATCH]:
        if _without_waiting(branch.redispatch, f"branch {branch.pk}"):
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
