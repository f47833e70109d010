"""Several runs at once in one pool process (runs.executor), against a real worker."""

import os
import signal

import pytest
from django.conf import settings
from django.db import connection

from runs.models import AuditEntry, Run, Status
from steps.models import Checkpoint
from tests.processes import Cluster, child_pids, wait_for
from tests.test_acceptance import assert_one_live_checkpoint_per_position, ledger_rows, step_counts
from tests.test_acceptance_liveness import FAST, succeeded
from tests.workflows import create_ledger

pytestmark = [
    pytest.mark.acceptance,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        settings.CELERY_BROKER_URL.startswith("filesystem://"),
        reason="on the embedded broker a pool process executes one run at a time (runs.executor)",
    ),
]


@pytest.fixture
def one_process(tmp_path):
    """One worker with one pool process that executes up to four runs at once."""
    create_ledger()
    cluster = Cluster(tmp_path, **FAST, DURABLE_RUNS_PER_PROCESS="4")
    worker = cluster.worker("one", pool="prefork", concurrency=1)
    yield cluster, worker
    cluster.stop()


def start_ledgers(cluster, count: int, **data) -> list[Run]:
    return [Run.objects.start("ledger", data, queue=cluster.queue) for _ in range(count)]


def most_at_once(intervals) -> int:
    """The largest number of the (start, end) intervals that share an instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = most = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def test_one_pool_process_executes_several_runs_at_once(one_process):
    cluster, _ = one_process
    runs = start_ledgers(cluster, 4, steps=2, pause_each=3.0)
    wait_for(lambda: succeeded(*runs), 120, "the runs to succeed", cluster)

    pids = {pid for run in runs for _step, _key, pid in ledger_rows(run.pk)}
    assert len(pids) == 1  # a single pool process executed every step
    first_steps = Checkpoint.objects.filter(run__in=runs, position=0).values_list("started_at", "finished_at")
    assert most_at_once(list(first_steps)) >= 3


def test_checkpoints_of_runs_that_finish_together_are_committed_together(one_process):
    if connection.vendor != "postgresql":
        pytest.skip("a row's inserting transaction (xmin) is PostgreSQL's")
    cluster, _ = one_process
    runs = [Run.objects.start("counter", {"steps": 60}, queue=cluster.queue) for _ in range(4)]
    wait_for(lambda: succeeded(*runs), 120, "the runs to succeed", cluster)

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT xmin::text, COUNT(DISTINCT run_id) FROM {Checkpoint._meta.db_table} "
            "WHERE run_id = ANY(%s) GROUP BY xmin::text",
            [[run.pk for run in runs]],
        )
        runs_per_transaction = [count for _xmin, count in cursor.fetchall()]
    assert sum(runs_per_transaction) >= 4 * 60  # every checkpoint, each in one transaction
    assert max(runs_per_transaction) >= 2  # some transaction committed several runs' checkpoints


def test_a_killed_pool_process_loses_none_of_its_runs_and_repeats_no_finished_step(one_process):
    cluster, worker = one_process
    runs = start_ledgers(cluster, 4, steps=3, slow_index=1, pause=120)
    wait_for(
        lambda: all(step_counts(run.pk).get("step-1") for run in runs), 120, "every run in step 1", cluster
    )
    (pool_process,) = child_pids(worker.pid)
    os.kill(pool_process, signal.SIGKILL)

    wait_for(lambda: succeeded(*runs), 120, "the runs to succeed", cluster)
    for run in runs:
        assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
        assert_one_live_checkpoint_per_position(run)


def test_terminating_one_run_hands_back_the_others_of_its_process_uncounted(one_process):
    cluster, _ = one_process
    hung = Run.objects.start("ledger", {"steps": 2, "slow_index": 0, "pause": 600}, queue=cluster.queue)
    others = start_ledgers(cluster, 2, steps=3, slow_index=1, pause=30)
    everyone = [hung, *others]
    wait_for(
        lambda: step_counts(hung.pk).get("step-0") and all(step_counts(r.pk).get("step-1") for r in others),
        120,
        "every run in its slow step",
        cluster,
    )
    Run.objects.get(pk=hung.pk).terminate(by="operator", reason="hung")

    wait_for(lambda: succeeded(*others), 120, "the other runs to succeed", cluster)
    hung.refresh_from_db()
    assert hung.status == Status.FAILED and hung.error_type == "Terminated"
    for run in others:
        actions = list(AuditEntry.objects.filter(run=run).values_list("action", "reason"))
        assert ("release", f"its pool process was killed to stop run {hung.pk}") in actions
        assert not [action for action, _ in actions if action == "recover"]
        assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
    assert Run.objects.filter(pk__in=[r.pk for r in everyone], status=Status.RUNNING).count() == 0


def test_a_worker_stopped_warmly_hands_its_runs_back_between_steps(tmp_path):
    create_ledger()
    cluster = Cluster(tmp_path, **FAST, DURABLE_RUNS_PER_PROCESS="4")
    try:
        stopping = cluster.worker("stopping", pool="prefork", concurrency=1)
        runs = start_ledgers(cluster, 3, steps=8, pause_each=0.5)
        wait_for(
            lambda: all(len(step_counts(run.pk)) >= 2 for run in runs), 120, "every run under way", cluster
        )
        stopping.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        stopping.wait(timeout=60)
        cluster.worker("next", pool="prefork", concurrency=1)

        wait_for(lambda: succeeded(*runs), 120, "the runs to succeed", cluster)
        for run in runs:
            # Each step ran once: the step in flight finished and was recorded before the hand-back.
            assert step_counts(run.pk) == {f"step-{index}": 1 for index in range(8)}
            assert not AuditEntry.objects.filter(run=run, action="recover").exists()
            assert Run.objects.get(pk=run.pk).recovery_count == 0
    finally:
        cluster.stop()


def unacknowledged_doorbells(run: Run) -> int:
    """How many doorbells of `run` a worker holds and has not acknowledged (Redis only)."""
    import json

    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    held = 0
    for value in client.hvals("unacked"):
        message = json.loads(value)[0]
        headers = message.get("headers") or {}
        held += headers.get("task") == "runs.execute" and headers.get("argsrepr") == f"({run.pk},)"
    return held


def test_a_doorbell_held_by_a_killed_pool_process_is_delivered_again(tmp_path):
    """A pool process whose run threads are all busy holds its next doorbell unacknowledged
    while it waits for a free thread. Killed, it must not take the doorbell with it: the
    message goes back to the queue (reject_on_worker_lost), so the run does not wait for the
    sweep to ring again (an hour here)."""
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("reads Redis's unacknowledged messages to know the doorbell is held")
    create_ledger()
    cluster = Cluster(tmp_path, **{**FAST, "DURABLE_REDISPATCH_AFTER": "3600"}, DURABLE_RUNS_PER_PROCESS="2")
    try:
        worker = cluster.worker("one", pool="prefork", concurrency=1)
        busy = start_ledgers(cluster, 2, steps=2, slow_index=0, pause=120)
        wait_for(
            lambda: all(step_counts(run.pk).get("step-0") for run in busy), 60, "both threads busy", cluster
        )
        waiting = Run.objects.start("ledger", {"steps": 2}, queue=cluster.queue)
        wait_for(lambda: unacknowledged_doorbells(waiting) == 1, 60, "its doorbell held", cluster)
        assert Run.objects.get(pk=waiting.pk).status == Status.PENDING

        (pool_process,) = child_pids(worker.pid)
        os.kill(pool_process, signal.SIGKILL)

        wait_for(lambda: succeeded(*busy, waiting), 120, "every run to succeed", cluster)
        assert step_counts(waiting.pk) == {"step-0": 1, "step-1": 1}
    finally:
        cluster.stop()
