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
