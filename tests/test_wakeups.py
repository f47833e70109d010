"""Wake-ups at scale: the sweep wakes waiting runs in batches, one UPDATE per batch."""

import logging
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import models, recovery
from runs.models import Run, Signal, Status, WaitKind
from runs.recovery import sweep
from steps.models import Branch, BranchStatus

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks: SQLite locks the whole database"
)


@pytest.fixture(params=["returning", "read_then_update"])
def wake_path(request, monkeypatch):
    """Both ways of waking a batch: UPDATE … RETURNING, and the read-then-update fallback."""
    if request.param == "read_then_update":
        monkeypatch.setattr(models, "_update_can_return", lambda: False)
    return request.param


def waiting(workflow: str = "arithmetic", *, overdue: timedelta | None = None, **fields) -> Run:
    """A run released to wait; with `overdue`, its wake-up time passed that long ago."""
    fields.setdefault("wait_kind", WaitKind.SLEEP)
    fields.setdefault("input", {"a": 1, "b": 2})
    if overdue is not None:
        fields["wake_at"] = timezone.now() - overdue
    return Run.objects.create(workflow=workflow, status=Status.WAITING, wait_position=0, **fields)


def statuses(*runs: Run) -> list[str]:
    return [Run.objects.get(pk=run.pk).status for run in runs]


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


# --- one batch ----------------------------------------------------------------------------


def test_it_wakes_the_most_overdue_runs_first(doorbells, wake_path):
    recent = waiting(overdue=timedelta(seconds=1))
    oldest = waiting(overdue=minutes(60))
    not_due = waiting(overdue=-minutes(5))
    older = waiting(overdue=minutes(3))

    assert sorted(Run.objects.due_to_wake().wake_batch(2)) == sorted([oldest.pk, older.pk])
    assert statuses(recent, oldest, not_due, older) == [
        Status.WAITING,
        Status.PENDING,
        Status.WAITING,
        Status.PENDING,
    ]

    assert Run.objects.due_to_wake().wake_batch(2) == [recent.pk]
    assert Run.objects.due_to_wake().wake_batch(2) == []
    assert statuses(not_due) == [Status.WAITING]


def test_it_rings_one_doorbell_per_woken_run_once_the_batch_commits(doorbells, wake_path):
    runs = [waiting(overdue=minutes(n)) for n in (1, 2, 3)]
    with transaction.atomic():
        woken = Run.objects.due_to_wake().wake_batch(10)
        assert doorbells.rung == []  # nothing rings before the wake-up is committed
    assert sorted(woken) == sorted(doorbells.rung) == sorted(run.pk for run in runs)
    assert doorbells.drain() == ["succeeded"] * 3  # the woken runs continue


def test_it_rings_nothing_when_the_batch_rolls_back(doorbells):
    run = waiting(overdue=minutes(1))
    with transaction.atomic():
        assert Run.objects.due_to_wake().wake_batch(10) == [run.pk]
        transaction.set_rollback(True)
    assert doorbells.rung == []
    assert statuses(run) == [Status.WAITING]


def test_it_stamps_the_woken_run_as_dispatched(doorbells, wake_path):
    run = waiting(overdue=minutes(1), updated_at=timezone.now() - minutes(2))
    before = timezone.now()
    Run.objects.due_to_wake().wake_batch(10)
    run.refresh_from_db()
    assert run.dispatched_at >= before
    assert run.updated_at == run.dispatched_at


def test_it_queues_runs_of_a_workflow_with_a_concurrency_limit_and_admits_them(doorbells, wake_path):
    limited = [waiting("limited", overdue=minutes(n)) for n in (3, 2, 1)]  # at most two at once
    free = waiting(overdue=minutes(1))

    assert sweep().woken == 4
    assert statuses(*limited, free) == [Status.PENDING, Status.PENDING, Status.QUEUED, Status.PENDING]
    # Admission takes the queued line oldest first; the third waits for a slot.
    assert sorted(doorbells.rung) == sorted([limited[0].pk, limited[1].pk, free.pk])


def test_it_reads_concurrency_limits_from_settings_when_waking(doorbells, settings, wake_path):
    settings.DURABLE_CONCURRENCY = {"arithmetic": 1}
    first, second = waiting(overdue=minutes(2)), waiting(overdue=minutes(1))
    assert sweep().woken == 2
    assert statuses(first, second) == [Status.PENDING, Status.QUEUED]
    assert doorbells.rung == [first.pk]


# --- the four sources ------------------------------------------------------------------------


def test_it_wakes_runs_whose_signal_child_or_branches_arrived(doorbells, wake_path):
    signalled = waiting(wait_kind=WaitKind.SIGNAL, wait_signal="approve")
    Signal.objects.create(run=signalled, name="approve")  # written without waking it
    other_signal = waiting(wait_kind=WaitKind.SIGNAL, wait_signal="approve")
    Signal.objects.create(run=other_signal, name="reject")

    parent, busy_parent = waiting(wait_kind=WaitKind.CHILD), waiting(wait_kind=WaitKind.CHILD)
    Run.objects.create(workflow="arithmetic", status=Status.SUCCEEDED, parent=parent, parent_position=0)
    waiting(parent=busy_parent, parent_position=0, overdue=-minutes(10))  # a child still sleeping

    group, busy_group = waiting(wait_kind=WaitKind.BRANCHES), waiting(wait_kind=WaitKind.BRANCHES)
    for run, status in ((group, BranchStatus.SUCCEEDED), (busy_group, BranchStatus.PENDING)):
        Branch.objects.create(
            run=run, position=0, index=0, name="add", target="tests.workflows:add", status=status
        )

    sleeping = waiting(overdue=-minutes(10))

    assert sweep().woken == 3
    assert sorted(doorbells.rung) == sorted([signalled.pk, parent.pk, group.pk])
    assert statuses(other_signal, busy_parent, busy_group, sleeping) == [Status.WAITING] * 4


def test_it_refuses_an_unknown_arrival_source():
    with pytest.raises(ValueError, match="due_to_wake"):
        Run.objects.wake_arrived("due_to_wake", 10)


# --- the sweep's budget ------------------------------------------------------------------------


def test_it_wakes_a_flood_over_several_sweeps_most_overdue_first(doorbells, monkeypatch):
    monkeypatch.setattr(recovery, "WAKE_BATCH", 2)
    monkeypatch.setattr(recovery, "WAKE_BATCHES_PER_SWEEP", 5)  # three arrival batches, two of due runs
    runs = [waiting(overdue=minutes(n)) for n in (5, 9, 1, 7, 3, 8, 2, 10, 4, 6)]
    by_lateness = sorted(runs, key=lambda run: run.wake_at)

    assert sweep().woken == 4
    assert sorted(doorbells.rung) == sorted(run.pk for run in by_lateness[:4])
    assert sweep().woken == 4
    assert sweep().woken == 2
    assert sweep().woken == 0
    assert sorted(doorbells.rung) == sorted(run.pk for run in runs)


def test_an_idle_sweep_costs_the_same_queries_however_many_runs_wait(doorbells, monkeypatch):
    # Housekeeping comes every TIDY_EVERY sweeps of the process: keep it out of both counts,
    # whatever sweeps the tests before this one ran.
    monkeypatch.setattr(recovery, "TIDY_EVERY", 10**9)
    monkeypatch.setattr(recovery, "sweeps", 1)
    with CaptureQueriesContext(connection) as empty:
        sweep()
    for kind in (WaitKind.SLEEP, WaitKind.RETRY, WaitKind.SIGNAL, WaitKind.CHILD, WaitKind.BRANCHES):
        for _ in range(5):
            waiting(wait_kind=kind, overdue=-minutes(10), wait_signal="approve")
    for run in Run.objects.filter(wait_kind=WaitKind.BRANCHES):
        Branch.objects.create(run=run, position=0, index=0, name="add", target="tests.workflows:add")
    for run in Run.objects.filter(wait_kind=WaitKind.CHILD):
        waiting(parent=run, parent_position=0, overdue=-minutes(10))
    with CaptureQueriesContext(connection) as busy:
        assert sweep().woken == 0
    assert len(busy.captured_queries) == len(empty.captured_queries)


# --- concurrency (PostgreSQL) ---------------------------------------------------------------


def in_thread(target, *args):
    """Run target in a thread of its own, with its own database connection."""

    def body():
        try:
            target(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread


@postgresql_only
def test_two_batches_at_once_take_different_runs_without_waiting_for_each_other(doorbells):
    runs = [waiting(overdue=minutes(n)) for n in range(1, 11)]
    first_taken, second_done = threading.Event(), threading.Event()
    taken: dict[str, list[int]] = {}

    def first():
        with transaction.atomic():
            taken["first"] = Run.objects.due_to_wake().wake_batch(4)
            first_taken.set()
            # Hold the rows locked: the other batch must finish meanwhile, not wait for us.
            taken["second finished meanwhile"] = second_done.wait(10)

    thread = in_thread(first)
    try:
        assert first_taken.wait(10)
        taken["second"] = Run.objects.due_to_wake().wake_batch(4)
    finally:
        second_done.set()
        thread.join()

    assert taken["second finished meanwhile"]
    by_lateness = [run.pk for run in sorted(runs, key=lambda run: run.wake_at)]
    assert sorted(taken["first"]) == sorted(by_lateness[:4])
    assert sorted(taken["second"]) == sorted(by_lateness[4:8])  # the next four, not the locked ones


@postgresql_only
def test_two_sweeps_at_once_never_wake_the_same_run_twice(doorbells, monkeypatch):
    monkeypatch.setattr(recovery, "WAKE_BATCH", 5)
    runs = [waiting(overdue=timedelta(seconds=n)) for n in range(1, 201)]
    woken = [0, 0]
    start = threading.Barrier(2)

    def sweeper(index):
        start.wait(10)
        while report := sweep():
            woken[index] += report.woken
            if not report.woken:
                break

    threads = [in_thread(sweeper, index) for index in range(2)]
    for thread in threads:
        thread.join()

    assert sum(woken) == len(runs)
    assert sorted(doorbells.rung) == sorted(run.pk for run in runs)  # each rung exactly once
    assert set(statuses(*runs)) == {Status.PENDING}


@postgresql_only
def test_a_sweep_skips_a_run_another_transaction_has_locked(doorbells):
    held, *others = [waiting(overdue=minutes(n)) for n in (9, 1, 2)]  # the held one is the most overdue
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with transaction.atomic():
            list(Run.objects.select_for_update().filter(pk=held.pk))
            locked.set()
            release.wait(10)

    thread = in_thread(hold_lock)
    try:
        assert locked.wait(10)
        assert sweep().woken == 2
    finally:
        release.set()
        thread.join()
    assert sorted(doorbells.rung) == sorted(run.pk for run in others)
    assert statuses(held) == [Status.WAITING]
    assert sweep().woken == 1


@postgresql_only
def test_a_sweep_wakes_a_run_while_another_transaction_adds_a_row_pointing_at_it(doorbells):
    run = waiting(overdue=minutes(1))
    inserted, release = threading.Event(), threading.Event()
    outcome = {}

    def add_signal():
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # check the foreign key now, not at commit
            Signal.objects.create(run_id=run.pk, name="later")  # which locks the run: FOR KEY SHARE
            inserted.set()
            outcome["sweep finished meanwhile"] = release.wait(10)

    thread = in_thread(add_signal)
    try:
        assert inserted.wait(10)
        assert sweep().woken == 1
    finally:
        release.set()
        thread.join()
    assert outcome["sweep finished meanwhile"]
    assert doorbells.rung == [run.pk]


@postgresql_only
def test_a_wake_up_batch_that_meets_a_lock_is_skipped_and_logged(doorbells, caplog):
    signalled = waiting(wait_kind=WaitKind.SIGNAL, wait_signal="approve")
    Signal.objects.create(run=signalled, name="approve")
    due = waiting(overdue=minutes(1))
    locked, release = threading.Event(), threading.Event()

    def lock_signals():
        # A migration, say, holding the signal table: the signalled check must not queue behind it.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {Signal._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(10)

    thread = in_thread(lock_signals)
    try:
        assert locked.wait(10)
        with caplog.at_level(logging.INFO, logger="runs.recovery"):
            assert sweep().woken == 1
    finally:
        release.set()
        thread.join()
    assert doorbells.rung == [due.pk]
    assert "met a lock and was skipped" in caplog.text
    assert statuses(signalled) == [Status.WAITING]
    assert sweep().woken == 1
    assert doorbells.rung == [due.pk, signalled.pk]
