"""Fan-out and flow control with real celery workers, killed for real."""

import os
import signal
import threading
import time

import pytest
from django.db import connection

from runs.models import Run, Status
from steps.models import Branch, RateLimitGrant
from tests.processes import wait_for
from tests.test_acceptance import assert_one_live_checkpoint_per_position, ledger_rows, status_of, step_counts

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def test_it_re_runs_only_unfinished_branches_after_a_sigkill(cluster):
    first = cluster.worker("first")
    cluster.beat()
    # Branches 1 and 3 stall long enough for the kill; the others finish at once.
    run = Run.objects.start("ledger_fan_out", {"branches": 5, "pauses": {"3": 60}}, queue=cluster.queue)
    wait_for(lambda: "branch-3" in step_counts(run.pk), 60, "branch 3 to start", cluster)
    done_before_kill = {b.index for b in Branch.objects.filter(run=run, status="succeeded")}
    cluster.kill(first)
    cluster.worker("second")
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the run to succeed", cluster)

    run.refresh_from_db()
    assert run.output == {"results": [0, 10, 20, 30, 40]}
    counts = step_counts(run.pk)
    assert counts["branch-3"] == 2  # cut off by the kill, so run again
    for index in done_before_kill:
        assert counts[f"branch-{index}"] == 1, f"finished branch {index} ran again"
    assert sum(counts.values()) == 6
    assert_one_live_checkpoint_per_position(run)


def test_it_keeps_child_runs_single_when_the_parent_worker_dies(cluster):
    first = cluster.worker("first")
    cluster.beat()
    run = Run.objects.start("ledger_parent", {"pause": 0}, queue=cluster.queue)
    wait_for(lambda: run.children.exists(), 60, "the child to start", cluster)
    cluster.kill(first)
    cluster.worker("second")
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the parent to succeed", cluster)

    assert run.children.count() == 1
    child = run.children.get()
    assert child.status == Status.SUCCEEDED
    # The kill may land inside one of the child's steps: that step runs again, with the same key.
    keys: dict[str, set] = {}
    for step, key, _pid in ledger_rows(child.pk):
        keys.setdefault(step, set()).add(key)
    assert {step: len(found) for step, found in keys.items()} == {"step-0": 1, "step-1": 1}
    assert Run.objects.get(pk=run.pk).output == {"child": {"done": [0, 1]}}


def test_it_never_runs_more_than_the_concurrency_limit(cluster):
    cluster.worker("wide", pool="prefork", concurrency=4)
    cluster.beat()
    runs = [Run.objects.start("ledger_limited", {"pause": 0.3}, queue=cluster.queue) for _ in range(20)]
    ids = [r.pk for r in runs]
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(Run.objects.filter(pk__in=ids, status=Status.RUNNING).count())
            time.sleep(0.02)
        connection.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        wait_for(
            lambda: Run.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == 20,
            120,
            "all 20 runs to succeed",
            cluster,
        )
    finally:
        stop.set()
        sampler.join()
    assert max(samples) == 2, f"running counts sampled: {sorted(set(samples))}"
    assert len(samples) > 50


def test_it_holds_a_rate_limit_across_two_worker_processes(cluster):
    cluster.worker("one", pool="prefork", concurrency=2)
    cluster.worker("two", pool="prefork", concurrency=2)
    cluster.beat()
    runs = [Run.objects.start("ledger_rate_limited", {"index": i}, queue=cluster.queue) for i in range(15)]
    ids = [r.pk for r in runs]
    wait_for(
        lambda: Run.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == 15,
        120,
        "all 15 runs to succeed",
        cluster,
    )
    grants = sorted(RateLimitGrant.objects.filter(key="test:shared-api").values_list("granted_at", flat=True))
    assert len(grants) == 15
    for i in range(len(grants) - 5):
        window = (grants[i + 5] - grants[i]).total_seconds()
        assert window >= 1.0, f"six calls within {window:.3f}s"
    with connection.cursor() as cursor:
        placeholders = ", ".join(["%s"] * len(ids))
        cursor.execute(f"SELECT COUNT(DISTINCT pid) FROM test_ledger WHERE run_id IN ({placeholders})", ids)
        assert cursor.fetchone()[0] >= 2, "both worker processes should have made calls"


def test_it_kills_prefork_children_without_losing_branches(cluster):
    worker = cluster.worker("prefork", pool="prefork", concurrency=2)
    cluster.beat()
    run = Run.objects.start(
        "ledger_fan_out", {"branches": 2, "pauses": {"0": 60, "1": 60}}, queue=cluster.queue
    )
    wait_for(lambda: len(step_counts(run.pk)) == 2, 60, "both branches to start", cluster)
    from tests.processes import child_pids

    for pid in child_pids(worker.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 30, "the run to succeed", cluster)
    assert step_counts(run.pk) == {"branch-0": 2, "branch-1": 2}
