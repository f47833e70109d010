"""Real celery workers, killed for real, on the configured database and broker."""

import time

import pytest
from django.db import connection
from django.db.models import Count

from runs.models import Run, Status
from steps.models import Checkpoint
from tests.processes import Cluster, broker_holds_messages, child_pids, wait_for, wipe_broker
from tests.workflows import create_ledger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def ledger_rows(run_id):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT step, idempotency_key, pid FROM test_ledger WHERE run_id = %s ORDER BY step", [run_id]
        )
        return cursor.fetchall()


def step_counts(run_id):
    counts = {}
    for step, _key, _pid in ledger_rows(run_id):
        counts[step] = counts.get(step, 0) + 1
    return counts


def status_of(run):
    return Run.objects.values_list("status", flat=True).get(pk=run.pk)


def assert_one_live_checkpoint_per_position(run):
    doubled = (
        Checkpoint.objects.live().filter(run=run).values("position").annotate(n=Count("id")).filter(n__gt=1)
    )
    assert list(doubled) == []


def test_it_completes_a_run_after_the_whole_worker_is_killed_mid_step(cluster):
    first = cluster.worker("first")
    cluster.beat()
    run = Run.objects.start(
        "ledger", {"steps": 5, "slow_index": 2, "pause": 60}, queue=cluster.queue, by="test"
    )
    wait_for(lambda: "step-2" in step_counts(run.pk), 60, "step 2 to start", cluster)

    cluster.kill(first)
    killed_at = time.monotonic()
    assert status_of(run) == Status.RUNNING
    cluster.worker("second")

    wait_for(lambda: step_counts(run.pk).get("step-2") == 2, 30, "step 2 to run again", cluster)
    recovery_seconds = time.monotonic() - killed_at
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 30, "the run to succeed", cluster)

    run.refresh_from_db()
    assert run.output == {"done": [0, 1, 2, 3, 4]}
    assert run.recovery_count == 1
    # Steps that finished before the kill ran exactly once; the killed one ran again.
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 1, "step-2": 2, "step-3": 1, "step-4": 1}
    keys = [key for step, key, _pid in ledger_rows(run.pk) if step == "step-2"]
    assert keys[0] == keys[1], "the re-executed step must present the same idempotency key"
    pids = {pid for step, _key, pid in ledger_rows(run.pk) if step == "step-2"}
    assert len(pids) == 2, "the second execution must come from the replacement worker"
    assert Checkpoint.objects.filter(run=run).count() == 5
    assert_one_live_checkpoint_per_position(run)
    # Default settings: 0.5 s heartbeat, 2 s lease, 0.5 s sweep.
    assert recovery_seconds < 10, f"recovery took {recovery_seconds:.1f}s"


def test_it_recovers_at_once_when_a_prefork_child_is_killed(tmp_path):
    create_ledger()
    # A lease this long proves the fast path: only the pool's own report of the
    # lost child can bring the run back within a few seconds.
    cluster = Cluster(tmp_path, DURABLE_LEASE_TIMEOUT="120")
    try:
        worker = cluster.worker("prefork", pool="prefork", concurrency=1)
        cluster.beat()
        run = Run.objects.start("ledger", {"steps": 3, "slow_index": 1, "pause": 60}, queue=cluster.queue)
        wait_for(lambda: "step-1" in step_counts(run.pk), 60, "step 1 to start", cluster)
        children = child_pids(worker.pid)
        assert len(children) == 1
        import os
        import signal

        os.kill(children[0], signal.SIGKILL)
        took = wait_for(lambda: status_of(run) == Status.SUCCEEDED, 20, "the run to succeed", cluster)
        # Well inside the 120 s lease: the pool reported the lost child at once.
        assert took < 10
        assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
        assert Run.objects.get(pk=run.pk).recovery_count == 1
        assert_one_live_checkpoint_per_position(run)
    finally:
        cluster.stop()


def test_it_completes_every_queued_run_after_the_broker_loses_its_messages(tmp_path):
    create_ledger()
    cluster = Cluster(tmp_path, DURABLE_REDISPATCH_AFTER="1")
    try:
        runs = [Run.objects.start("ledger", {"steps": 3}, queue=cluster.queue) for _ in range(5)]
        assert broker_holds_messages(cluster.queue)
        wipe_broker(cluster.queue)  # the doorbells are gone; the runs are still pending in the database
        assert not broker_holds_messages(cluster.queue)
        assert all(status_of(run) == Status.PENDING for run in runs)

        cluster.beat()
        cluster.worker("after-wipe")
        wait_for(
            lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status=Status.SUCCEEDED).count() == 5,
            60,
            "all runs to succeed",
            cluster,
        )
        for run in runs:
            assert step_counts(run.pk) == {"step-0": 1, "step-1": 1, "step-2": 1}
            assert_one_live_checkpoint_per_position(run)
    finally:
        cluster.stop()
