"""Sleeps, signals and dead-lettering with a real worker and the sweep it runs."""

import pytest

from runs.models import AuditEntry, Run, Status
from tests.processes import Cluster, wait_for
from tests.test_acceptance import status_of, step_counts
from tests.workflows import create_ledger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def test_a_run_sleeps_without_holding_its_worker_and_wakes_on_time(cluster):
    cluster.worker("solo")
    run = Run.objects.start("sleeper", {"seconds": 2}, queue=cluster.queue)
    wait_for(lambda: status_of(run) == Status.WAITING, 60, "the run to sleep", cluster)
    slept = Run.objects.get(pk=run.pk)
    assert (slept.wait_kind, slept.lease_owner) == ("sleep", "")  # no worker holds it
    other = Run.objects.start("arithmetic", {"a": 1, "b": 2}, queue=cluster.queue)
    wait_for(lambda: status_of(other) == Status.SUCCEEDED, 60, "another run meanwhile", cluster)
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the sleeper to wake and finish", cluster)
    assert Run.objects.get(pk=run.pk).output == 2


def test_a_run_waits_for_a_signal_and_goes_on_with_its_payload(cluster):
    cluster.worker("solo")
    run = Run.objects.start("approval", {}, queue=cluster.queue)
    wait_for(lambda: status_of(run) == Status.WAITING, 60, "the run to wait for approval", cluster)
    Run.objects.get(pk=run.pk).send_signal("approve", {"approved": True, "by": "alice"}, by="alice")
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the approved run to finish", cluster)
    assert Run.objects.get(pk=run.pk).output == {"plan": 42, "outcome": "done", "by": "alice"}


def test_a_run_whose_step_keeps_killing_its_worker_is_dead_lettered(tmp_path):
    create_ledger()
    # A doorbell lost to a busy embedded database (SQLite "database is locked" in the pool
    # process that took it) is rung again after a second, not fifteen.
    cluster = Cluster(tmp_path, DURABLE_MAX_RECOVERIES="2", DURABLE_REDISPATCH_AFTER="1")
    try:
        cluster.worker("prefork", pool="prefork", concurrency=1)
        run = Run.objects.start("doomed", {}, queue=cluster.queue)
        wait_for(lambda: status_of(run) == Status.DEAD, 240, "the run to be dead-lettered", cluster)
        run.refresh_from_db()
        assert run.error_type == "WorkerLost"
        # Three losses in a row at the same step: the third one dead-letters it.
        assert step_counts(run.pk) == {"step-0": 1, "die": 3}
        assert AuditEntry.objects.filter(run=run, action="recover").count() == 3
    finally:
        cluster.stop()
