"""Liveness with real workers: GIL-bound steps, frozen workers, hung steps, database blips."""

import os
import signal
import time

import pytest
from django.db import OperationalError, connection, transaction

from runs.models import AuditEntry, Run, Status
from steps.models import Attempt, Checkpoint
from tests.processes import Cluster, wait_for
from tests.test_acceptance import assert_one_live_checkpoint_per_position, status_of, step_counts
from tests.workflows import create_ledger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

# A one-second lease, beaten four times a second: the faults below outlast it.
FAST = {
    "DURABLE_LEASE_TIMEOUT": "1",
    "DURABLE_HEARTBEAT_INTERVAL": "0.25",
    "DURABLE_SWEEP_INTERVAL": "0.25",
    "DURABLE_REDISPATCH_AFTER": "1",
}


@pytest.fixture
def fast_cluster(tmp_path, request):
    create_ledger()
    overrides = getattr(request, "param", {})
    cluster = Cluster(tmp_path, **FAST, **overrides)
    yield cluster
    cluster.stop()


def needs_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("row locks, idle-in-transaction timeouts and killed sessions are PostgreSQL's")


def succeeded(*runs) -> bool:
    return Run.objects.filter(pk__in=[r.pk for r in runs], status=Status.SUCCEEDED).count() == len(runs)


def row_is_locked(run_id: int) -> bool:
    try:
        with transaction.atomic():
            Run.objects.select_for_update(nowait=True).filter(pk=run_id).exists()
    except OperationalError:
        return True
    return False


def test_a_step_holding_the_gil_for_twice_the_lease_runs_once(fast_cluster):
    fast_cluster.worker("prefork", pool="prefork", concurrency=1)
    fast_cluster.beat()
    run = Run.objects.start("hog", {"seconds": 2.5}, queue=fast_cluster.queue)
    wait_for(lambda: succeeded(run), 120, "the run to succeed", fast_cluster)

    run.refresh_from_db()
    assert run.output["held"] >= 2.0  # the step really held the GIL past the 1 s lease
    assert step_counts(run.pk) == {"hog": 1, "step-1": 1}
    assert run.recovery_count == 0
    assert not AuditEntry.objects.filter(run=run, action="recover").exists()


def test_a_frozen_worker_delays_only_its_own_run_and_its_late_writes_are_refused(tmp_path):
    needs_postgresql()
    create_ledger()
    # PostgreSQL ends the frozen worker's open transaction after 3 s, freeing its row lock.
    cluster = Cluster(tmp_path, **FAST, DURABLE_DB_IDLE_IN_TRANSACTION_TIMEOUT="3")
    try:
        frozen = cluster.worker("frozen", pool="prefork", concurrency=1)
        cluster.beat()
        run = Run.objects.start("locked", {"pause": 8}, queue=cluster.queue)
        wait_for(lambda: row_is_locked(run.pk), 60, "the step to hold its run's row lock", cluster)
        os.killpg(frozen.pid, signal.SIGSTOP)
        try:
            cluster.worker("healthy", pool="prefork", concurrency=2)
            unrelated = Run.objects.start("ledger", {"steps": 3}, queue=cluster.queue)
            # Maintenance skips the locked row instead of queueing behind it.
            wait_for(lambda: succeeded(unrelated), 60, "an unrelated run to succeed", cluster)
            # Once PostgreSQL ends the frozen transaction, another worker takes the run over.
            wait_for(lambda: succeeded(run), 60, "the frozen worker's run to succeed elsewhere", cluster)
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)
        # The thawed worker finishes its step and tries to record it: refused.
        refused = "this worker's write was refused"
        wait_for(lambda: refused in frozen.log_path.read_text(), 60, "the thawed worker's write", cluster)
        run.refresh_from_db()
        assert run.output == "finished"
        assert step_counts(run.pk) == {"locked": 2, "step-1": 1}
        assert Checkpoint.objects.filter(run=run).count() == 2
        assert_one_live_checkpoint_per_position(run)
        assert run.recovery_count == 1
    finally:
        cluster.stop()


@pytest.mark.parametrize("fast_cluster", [{"DURABLE_MAX_STEP_SECONDS": "2"}], indirect=True)
def test_the_maximum_step_duration_interrupts_a_hung_step(fast_cluster):
    fast_cluster.worker("prefork", pool="prefork", concurrency=1)
    fast_cluster.beat()
    run = Run.objects.start("ledger", {"steps": 3, "slow_index": 1, "pause": 600}, queue=fast_cluster.queue)
    wait_for(lambda: succeeded(run), 90, "the run to succeed after the hung attempt", fast_cluster)
    attempt = Attempt.objects.get(run=run, position=1)
    assert attempt.error_type == "StepTimeout"
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
    assert Run.objects.get(pk=run.pk).recovery_count == 0


@pytest.mark.parametrize(
    "fast_cluster", [{"DURABLE_MAX_STEP_SECONDS": "1", "DURABLE_KILL_GRACE": "1"}], indirect=True
)
def test_a_step_stuck_in_c_code_is_killed_and_its_attempts_run_out(fast_cluster):
    fast_cluster.worker("prefork", pool="prefork", concurrency=1)
    fast_cluster.beat()
    run = Run.objects.start("hog", {"seconds": 30}, queue=fast_cluster.queue)
    wait_for(lambda: status_of(run) == Status.FAILED, 120, "the run to fail", fast_cluster)
    run.refresh_from_db()
    assert run.error_type == "StepTimeout"
    # The default policy's three attempts, each killed; never a lost worker.
    assert step_counts(run.pk) == {"hog": 3}
    assert [a.error_type for a in Attempt.objects.filter(run=run)] == ["StepTimeout"] * 3
    assert run.recovery_count == 0


def test_a_killed_holder_leaves_nothing_running_and_terminate_reaches_a_running_step(fast_cluster):
    fast_cluster.worker("prefork", pool="prefork", concurrency=1)
    fast_cluster.beat()
    run = Run.objects.start("ledger", {"steps": 3, "slow_index": 1, "pause": 600}, queue=fast_cluster.queue)
    wait_for(lambda: "step-1" in step_counts(run.pk), 60, "step 1 to start", fast_cluster)
    Run.objects.get(pk=run.pk).terminate(by="operator", reason="hung")
    wait_for(lambda: status_of(run) == Status.FAILED, 30, "the run to end", fast_cluster)
    run.refresh_from_db()
    assert run.error_type == "Terminated"
    assert Attempt.objects.get(run=run, position=1).error_type == "Terminated"

    run.resume(by="operator")
    wait_for(lambda: succeeded(run), 60, "the resumed run to succeed", fast_cluster)
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}


def test_cancel_interrupts_a_running_step(fast_cluster):
    fast_cluster.worker("prefork", pool="prefork", concurrency=1)
    fast_cluster.beat()
    run = Run.objects.start("ledger", {"steps": 3, "slow_index": 1, "pause": 600}, queue=fast_cluster.queue)
    wait_for(lambda: "step-1" in step_counts(run.pk), 60, "step 1 to start", fast_cluster)
    assert Run.objects.get(pk=run.pk).cancel(by="operator") == "cancel requested"
    wait_for(lambda: status_of(run) == Status.CANCELLED, 30, "the run to be cancelled", fast_cluster)
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 1}


def test_killed_database_connections_dead_letter_nothing(fast_cluster):
    needs_postgresql()
    fast_cluster.worker("one", pool="prefork", concurrency=2)
    fast_cluster.worker("two", pool="prefork", concurrency=2)
    fast_cluster.beat()
    runs = [
        Run.objects.start("ledger", {"steps": 8, "pause_each": 0.15}, queue=fast_cluster.queue)
        for _ in range(6)
    ]
    # The kills start once the runs are under way (workers start slowly on a loaded machine).
    wait_for(lambda: Checkpoint.objects.filter(run__in=runs).exists(), 120, "a first step", fast_cluster)
    killed = 0
    for _ in range(12):
        time.sleep(0.4)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            killed += cursor.fetchone()[0]
    assert killed >= 12
    wait_for(lambda: succeeded(*runs), 180, "every run to succeed", fast_cluster)
    for run in runs:
        run.refresh_from_db()
        assert run.output == {"done": list(range(8))}
        assert_one_live_checkpoint_per_position(run)
    assert not Run.objects.filter(status=Status.DEAD).exists()


def test_a_worker_frozen_inside_a_step_is_taken_over_and_its_late_write_refused(fast_cluster):
    frozen = fast_cluster.worker("frozen", pool="prefork", concurrency=1)
    run = Run.objects.start("ledger", {"steps": 3, "slow_index": 1, "pause": 6}, queue=fast_cluster.queue)
    wait_for(lambda: "step-1" in step_counts(run.pk), 60, "step 1 to start", fast_cluster)
    os.killpg(frozen.pid, signal.SIGSTOP)  # a paused VM, outside any transaction
    try:
        fast_cluster.worker("healthy", pool="prefork", concurrency=1)
        wait_for(lambda: succeeded(run), 60, "another worker to finish the run", fast_cluster)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    refused = "this worker's write was refused"
    wait_for(lambda: refused in frozen.log_path.read_text(), 60, "the thawed worker's write", fast_cluster)
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
    assert Checkpoint.objects.filter(run=run).count() == 3
    assert_one_live_checkpoint_per_position(run)


def test_two_sweeps_recovering_the_same_run_at_once_recover_it_once(doorbells):
    needs_postgresql()
    import threading

    from django.db import connection as thread_connection

    from tests.conftest import lapse_leases

    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    assert Run.objects.claim(run.pk, "gone-worker/1", "t")
    lapse_leases()
    outcomes, barrier = [], threading.Barrier(2)

    def recover():
        barrier.wait()
        outcomes.append(Run.objects.get(pk=run.pk).recover("its worker process stopped heartbeating"))
        thread_connection.close()

    threads = [threading.Thread(target=recover) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes, key=str) == [None, "pending"]
    assert Run.objects.get(pk=run.pk).recovery_count == 1
    assert AuditEntry.objects.filter(run=run, action="recover").count() == 1
