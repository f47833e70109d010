"""Recovery with a real worker: an operator fixes a step's bad output and the run finishes."""

import pytest

from runs.models import AuditEntry, Run, Status
from steps.models import Checkpoint
from tests.processes import wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def status_of(run):
    return Run.objects.values_list("status", flat=True).get(pk=run.pk)


def test_edit_and_continue_reruns_the_failed_step_on_a_real_worker(cluster):
    cluster.worker("only")
    cluster.beat()
    run = Run.objects.start("pricing", {"name": "widget", "price": -5}, queue=cluster.queue, by="test")
    wait_for(lambda: status_of(run) == Status.FAILED, 60, "the bad price to fail step 1", cluster)
    run.refresh_from_db()
    assert run.error_position == 1 and "invalid price -5" in run.error_message

    run.edit_and_continue(0, {"item": "widget", "price": 12}, by="test", reason="feed typo")
    wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the continued run to succeed", cluster)

    run.refresh_from_db()
    assert run.output == {"invoiced": 12}
    live = {c.position: c.output for c in Checkpoint.objects.live().filter(run=run)}
    assert live == {0: {"item": "widget", "price": 12}, 1: {"checked": 12}, 2: {"invoiced": 12}}
    superseded = Checkpoint.objects.filter(run=run, superseded_at__isnull=False).order_by("position")
    assert [(c.position, c.status) for c in superseded] == [(0, "succeeded"), (1, "failed")]
    entry = AuditEntry.objects.get(run=run, action="edit and continue")
    assert entry.details["before"]["price"] == -5 and entry.details["after"]["price"] == 12
