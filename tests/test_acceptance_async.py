"""An async workflow on real celery workers, killed for real mid-step."""

import os
import signal
import time

import pytest

import tests.async_workflows  # noqa: F401  (registers the async test workflows here too)
from runs.models import Run, Status
from tests.processes import Cluster, child_pids, wait_for
from tests.test_acceptance import assert_one_live_checkpoint_per_position, ledger_rows, status_of, step_counts
from tests.workflows import create_ledger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

MODULES = "tests.workflows,tests.async_workflows"


@pytest.fixture
def async_cluster(tmp_path):
    create_ledger()
    cluster = Cluster(tmp_path, DURABLE_WORKFLOW_MODULES=MODULES)
    yield cluster
    cluster.stop()


def test_an_async_run_resumes_after_its_whole_worker_is_killed_mid_step(async_cluster):
    cluster = async_cluster
    first = cluster.worker("first", pool="prefork", concurrency=1)
    cluster.beat()
    run = Run.objects.start("async_ledger", {"steps": 4, "slow_index": 2, "pause": 60}, queue=cluster.queue)
    wait_for(lambda: "step-2" in step_counts(run.pk), 60, "async step 2 to start", cluster)

    cluster.kill(first)
    killed_at = time.monotonic()
    assert status_of(run) == Status.RUNNING
    cluster.worker("second", pool="prefork", concurrency=1)
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the run to succeed", cluster)

    run.refresh_from_db()
    assert run.output == {"done": [0, 1, 2, 3]}
    assert run.recovery_count == 1
    # The steps that finished before the kill ran once; the killed one ran again.
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 1, "step-2": 2, "step-3": 1}
    rows = [(key, pid) for step, key, pid in ledger_rows(run.pk) if step == "step-2"]
    assert rows[0][0] == rows[1][0] == run.step_idempotency_key(2)
    assert rows[0][1] != rows[1][1], "the second execution comes from the new worker"
    assert [c.output["index"] for c in run.live_checkpoints()] == [0, 1, 2, 3]
    assert_one_live_checkpoint_per_position(run)
    assert time.monotonic() - killed_at < 60


def test_an_async_run_resumes_at_once_when_its_pool_process_is_killed(tmp_path):
    create_ledger()
    # A lease this long proves the pool's own report of the lost child brought the run back.
    cluster = Cluster(tmp_path, DURABLE_WORKFLOW_MODULES=MODULES, DURABLE_LEASE_TIMEOUT="120")
    try:
        worker = cluster.worker("prefork", pool="prefork", concurrency=1)
        cluster.beat()
        run = Run.objects.start(
            "async_ledger", {"steps": 3, "slow_index": 1, "pause": 60}, queue=cluster.queue
        )
        wait_for(lambda: "step-1" in step_counts(run.pk), 60, "async step 1 to start", cluster)
        children = child_pids(worker.pid)
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)

        wait_for(lambda: status_of(run) == Status.SUCCEEDED, 30, "the run to succeed", cluster)
        assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
        run.refresh_from_db()
        assert run.recovery_count == 1
        assert run.output == {"done": [0, 1, 2]}
        assert_one_live_checkpoint_per_position(run)
    finally:
        cluster.stop()
