"""A deploy with runs in flight, with real worker processes: old code, then new code."""

import pytest
from django.utils import timezone

from runs.models import Run, Status
from steps.models import Checkpoint
from tests.processes import wait_for
from tests.test_acceptance import status_of, step_counts

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def steps_of(run) -> list[str]:
    return list(Checkpoint.objects.live().filter(run=run).order_by("position").values_list("name", flat=True))


def pass_the_hour(*runs) -> None:
    """The runs' sleeps end now, as if the hour had passed (the workers' clocks are real ones,
    so the recorded wake-up time moves instead: on the run and on its sleep's checkpoint)."""
    now = timezone.now()
    ids = [run.pk for run in runs]
    Checkpoint.objects.filter(run__in=ids, name="sleep").update(output={"until": now.isoformat()})
    Run.objects.filter(pk__in=ids).update(wake_at=now)


def test_a_run_sleeping_under_old_code_finishes_on_the_old_path_after_a_deploy_adds_a_patched_step(
    cluster,
):
    old_worker = cluster.worker("old-code")
    old = Run.objects.start("onboarding", {"seconds": 3600}, queue=cluster.queue)
    wait_for(lambda: status_of(old) == Status.WAITING, 60, "the run to sleep under the old code", cluster)
    assert steps_of(old) == ["add", "sleep"]

    # The deploy: the old worker goes, one with the patched workflow comes.
    cluster.kill(old_worker)
    cluster.env["TESTS_ONBOARDING"] = "patched"
    cluster.worker("new-code")
    new = Run.objects.start("onboarding", {"seconds": 3600}, queue=cluster.queue)
    wait_for(lambda: status_of(new) == Status.WAITING, 60, "the new run to sleep", cluster)
    pass_the_hour(old, new)
    wait_for(lambda: status_of(old) == Status.SUCCEEDED, 60, "the old run to finish", cluster)
    wait_for(lambda: status_of(new) == Status.SUCCEEDED, 60, "the new run to finish", cluster)

    old.refresh_from_db(), new.refresh_from_db()
    assert old.output == {"account": 12, "welcomed": None}
    assert steps_of(old) == ["add", "sleep", "add"]
    assert step_counts(old.pk) == {}
    assert new.output == {"account": 12, "welcomed": "welcome 2"}
    assert steps_of(new) == ["add", "patch:send-welcome", "welcome", "sleep", "add"]
    assert step_counts(new.pk) == {"welcome": 1}


def test_a_pinned_run_resumes_only_on_a_worker_that_registers_its_version(tmp_path, settings):
    import dataclasses

    from runs.models import WaitKind
    from runs.workflow import registry
    from tests.processes import Cluster
    from tests.workflows import create_ledger

    create_ledger()
    cluster = Cluster(tmp_path, DURABLE_PINNED_RETRY_SECONDS="0.5")
    v2_queue = f"{cluster.queue}-v2"
    settings.DURABLE_QUEUES = [*settings.DURABLE_QUEUES, v2_queue]
    try:
        v1 = cluster.worker("v1")
        old = Run.objects.start("pinned_flow", {}, queue=cluster.queue)
        wait_for(lambda: status_of(old) == Status.WAITING, 60, "the v1 run to sleep", cluster)

        # Version 2 is deployed on its own queue; the old queue keeps a v1 worker.
        cluster.env["TESTS_PINNED_VERSION"] = "2"
        cluster.worker("v2", queues=v2_queue)
        v2 = dataclasses.replace(registry.get("pinned_flow"), declared_version="2")
        registry._workflows["pinned_flow"] = v2
        try:
            new = Run.objects.start("pinned_flow", {}, queue=v2_queue)
        finally:
            registry._workflows["pinned_flow"] = dataclasses.replace(v2, declared_version="1")
        assert new.code_version == "2"
        wait_for(lambda: status_of(new) == Status.WAITING, 60, "the v2 run to sleep", cluster)

        # A v2 worker that consumes the old queue too leaves the v1 run alone...
        cluster.kill(v1)
        cluster.worker("v2-on-old-queue")
        pass_the_hour(old, new)
        wait_for(lambda: status_of(new) == Status.SUCCEEDED, 60, "the v2 run to finish on v2", cluster)
        wait_for(
            lambda: Run.objects.get(pk=old.pk).wait_kind == WaitKind.VERSION,
            60,
            "the v1 run to wait for its version",
            cluster,
        )
        assert status_of(old) == Status.WAITING
        # ...until a worker with version 1 is back on it.
        cluster.env["TESTS_PINNED_VERSION"] = "1"
        cluster.worker("v1-again")
        wait_for(lambda: status_of(old) == Status.SUCCEEDED, 60, "the v1 run to finish on v1", cluster)
        assert Run.objects.get(pk=old.pk).output == {"first": 2, "finished_by_version": "1"}
        assert Run.objects.get(pk=new.pk).output == {"first": 2, "finished_by_version": "2"}
    finally:
        cluster.stop()
