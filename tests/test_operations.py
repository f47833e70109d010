"""Operator operations on runs: each is a model method, audited, and refuses wrong states."""

import pytest
from django.contrib.auth.models import User

from runs.models import TRANSITIONS, AuditEntry, InvalidOperation, Run, Status, check_transition
from steps.models import Checkpoint, CheckpointStatus
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return User.objects.create_user("olivia", password="x")


def failed_payment(doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    exhaust_retries(doorbells, rounds=4)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    return run


def test_it_resumes_a_failed_run_with_fresh_attempts_for_the_failed_step(doorbells, operator):
    run = failed_payment(doorbells)
    workflows.PAYMENTS.timeouts_left = 0
    run.resume(by=operator, reason="provider is back")
    assert run.status == Status.PENDING
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.error_type == ""
    # The failure checkpoint is kept, marked superseded; the new one is live.
    rows = list(Checkpoint.objects.filter(run=run).order_by("id"))
    assert [(r.status, r.superseded_at is not None) for r in rows] == [
        (CheckpointStatus.FAILED, True),
        (CheckpointStatus.SUCCEEDED, False),
    ]
    entry = AuditEntry.objects.get(run=run, action="resume")
    assert (entry.actor, entry.actor_name, entry.reason) == (operator, "olivia", "provider is back")


def test_it_refuses_to_resume_a_succeeded_run(doorbells, operator):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.drain()
    run.refresh_from_db()
    with pytest.raises(InvalidOperation, match=r"Cannot resume run .* it is succeeded"):
        run.resume(by=operator)
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED
    assert not AuditEntry.objects.filter(run=run, action="resume").exists()


def test_it_retries_from_a_step_keeping_superseded_checkpoints(doorbells, operator):
    run = Run.objects.start("counter", {"steps": 5})
    doorbells.drain()
    run.refresh_from_db()
    run.retry_from(2, by=operator, reason="bad data in step 2")
    assert (run.status, run.steps_done, run.epoch) == (Status.PENDING, 2, 1)
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"sum": 10}
    assert Checkpoint.objects.filter(run=run).count() == 8
    superseded = Checkpoint.objects.filter(run=run, superseded_at__isnull=False)
    assert sorted(superseded.values_list("position", flat=True)) == [2, 3, 4]
    assert sorted(run.live_checkpoints().values_list("position", flat=True)) == [0, 1, 2, 3, 4]
    assert set(run.live_checkpoints().filter(position__gte=2).values_list("epoch", flat=True)) == {1}
    assert workflows.CALLS["add"] == 8
    entry = AuditEntry.objects.get(run=run, action="retry")
    assert entry.details == {"from_position": 2, "superseded": 3}


def test_it_refuses_a_retry_from_a_position_the_run_does_not_have(doorbells, operator):
    run = Run.objects.start("counter", {"steps": 3})
    doorbells.drain()
    run.refresh_from_db()
    for position in (3, -1):
        with pytest.raises(InvalidOperation, match="no step at position"):
            run.retry_from(position, by=operator)
    assert Checkpoint.objects.filter(run=run, superseded_at__isnull=False).count() == 0
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED


def test_it_refuses_to_retry_a_running_run(operator):
    run = Run.objects.create(workflow="counter", input={"steps": 3}, steps_done=1)
    Checkpoint.objects.create(
        run=run,
        position=0,
        name="add",
        status="succeeded",
        output=0,
        started_at=run.created_at,
        finished_at=run.created_at,
    )
    Run.objects.claim(run.pk, "w", "t")
    with pytest.raises(InvalidOperation, match="it is running"):
        run.retry_from(0, by=operator)
    assert Checkpoint.objects.get(run=run).superseded_at is None


def test_it_cancels_a_pending_run_at_once(doorbells, operator):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    assert run.cancel(by=operator, reason="duplicate") == "cancelled"
    assert doorbells.drain() == ["skipped"]
    assert Run.objects.get(pk=run.pk).status == Status.CANCELLED
    assert workflows.CALLS["add"] == 0


def test_it_cancels_a_waiting_run(doorbells, operator):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    run.refresh_from_db()
    assert run.cancel(by=operator) == "cancelled"
    with pytest.raises(InvalidOperation, match="already cancelled"):
        run.send_signal("approve", {"approved": True}, by=operator)


def test_it_cancels_a_running_run_before_its_next_step(doorbells):
    run = Run.objects.start("cancelled_midway", {})
    assert doorbells.drain() == ["cancelled"]
    run.refresh_from_db()
    assert run.status == Status.CANCELLED
    assert run.finished_at is not None
    # The step that was running when the cancel came is recorded; the next never ran.
    assert list(run.live_checkpoints().values_list("name", flat=True)) == ["operator_cancels"]
    assert workflows.CALLS["add"] == 0
    assert AuditEntry.objects.get(run=run, action="cancel").details == {"outcome": "cancel requested"}


def test_it_refuses_to_cancel_a_finished_run(doorbells, operator):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.drain()
    run.refresh_from_db()
    with pytest.raises(InvalidOperation, match="already succeeded"):
        run.cancel(by=operator)


def test_it_edits_a_checkpoint_keeps_the_old_one_and_resumes(doorbells, operator):
    run = failed_payment(doorbells)
    run.edit_checkpoint(0, {"charged": 700, "key": "manual"}, by=operator, reason="paid by phone")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"receipt": {"charged": 700, "key": "manual"}}
    old, new = Checkpoint.objects.filter(run=run).order_by("id")
    assert old.superseded_at is not None and old.status == CheckpointStatus.FAILED
    assert new.edited_from == old and new.output == {"charged": 700, "key": "manual"}
    edit = AuditEntry.objects.get(run=run, action="edit")
    assert edit.actor == operator
    assert edit.details["after"] == {"charged": 700, "key": "manual"}
    assert "TimeoutError" in edit.details["before_error"]
    assert workflows.CALLS["charge"] == 4


def test_it_refuses_an_edit_with_non_json_output_and_changes_nothing(doorbells, operator):
    run = failed_payment(doorbells)
    with pytest.raises(InvalidOperation, match="not JSON"):
        run.edit_checkpoint(0, {"x": float("nan")}, by=operator)
    with pytest.raises(InvalidOperation, match="no live checkpoint at position 5"):
        run.edit_checkpoint(5, 1, by=operator)
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert Checkpoint.objects.filter(run=run).count() == 1
    assert not AuditEntry.objects.filter(run=run, action="edit").exists()


def test_it_refuses_a_signal_without_a_name_or_with_a_non_json_payload(doorbells, operator):
    run = Run.objects.start("approval", {})
    with pytest.raises(InvalidOperation, match="needs a name"):
        run.send_signal("  ", {}, by=operator)
    with pytest.raises(InvalidOperation, match="not JSON"):
        run.send_signal("approve", {"when": object()}, by=operator)
    assert not run.signals.exists()


def test_every_status_has_a_row_in_the_transition_table():
    assert set(TRANSITIONS) == set(Status.values)
    for targets in TRANSITIONS.values():
        assert targets <= set(Status.values)


def test_it_refuses_a_move_missing_from_the_transition_table():
    with pytest.raises(AssertionError, match="succeeded -> running"):
        check_transition([Status.SUCCEEDED], Status.RUNNING)
    check_transition([Status.FAILED, Status.DEAD], Status.PENDING)
