"""Recovery that fixes the run: edit and continue, retry now, code versions, signal reuse."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from runs.models import AuditEntry, InvalidOperation, Run, Status, WaitKind
from runs.workflow import registry
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return User.objects.create_user("olivia", password="x")


def failed_pricing(doorbells, price=-5) -> Run:
    run = Run.objects.start("pricing", {"name": "widget", "price": price})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_position == 1 and run.error_message.endswith("invalid price -5")
    return run


def test_it_edits_a_step_and_runs_the_failed_step_after_it_again(doorbells, operator):
    run = failed_pricing(doorbells)
    epoch = run.epoch
    run.edit_and_continue(0, {"item": "widget", "price": 12}, by=operator, reason="typo in the feed")
    assert run.status == Status.PENDING
    assert run.steps_done == 1
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"invoiced": 12}
    assert run.epoch == epoch + 1  # the later steps get new idempotency keys
    rows = [
        (c.position, c.status, c.superseded_at is not None, c.output)
        for c in Checkpoint.objects.filter(run=run).order_by("position", "id")
    ]
    assert rows == [
        (0, CheckpointStatus.SUCCEEDED, True, {"item": "widget", "price": -5}),
        (0, CheckpointStatus.SUCCEEDED, False, {"item": "widget", "price": 12}),
        (1, CheckpointStatus.FAILED, True, None),
        (1, CheckpointStatus.SUCCEEDED, False, {"checked": 12}),
        (2, CheckpointStatus.SUCCEEDED, False, {"invoiced": 12}),
    ]
    edited = Checkpoint.objects.live().get(run=run, position=0)
    assert edited.edited_from.output == {"item": "widget", "price": -5}
    assert Attempt.objects.filter(run=run, position=1).get().superseded_at is not None
    entry = AuditEntry.objects.get(run=run, action="edit and continue")
    assert (entry.actor, entry.reason) == (operator, "typo in the feed")
    assert entry.details["before"] == {"item": "widget", "price": -5}
    assert entry.details["after"] == {"item": "widget", "price": 12}
    assert entry.details["superseded"] == 1  # the failed step 1


def test_a_plain_edit_of_an_earlier_step_replays_the_failure_which_edit_and_continue_fixes(doorbells):
    run = failed_pricing(doorbells)
    run.edit_checkpoint(0, {"item": "widget", "price": 12})
    assert doorbells.drain() == ["failed"]  # the issue's trap: step 1's failure is replayed
    run.refresh_from_db()
    run.edit_and_continue(0, {"item": "widget", "price": 12})
    assert doorbells.drain() == ["succeeded"]


def test_edit_and_continue_also_reopens_a_succeeded_run(doorbells, operator):
    run = Run.objects.start("pricing", {"name": "widget", "price": 3})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    run.edit_and_continue(0, {"item": "widget", "price": 4}, by=operator)
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"invoiced": 4}
    assert Checkpoint.objects.filter(run=run).count() == 6  # 3 kept superseded, 3 live


def test_edit_and_continue_refuses_bad_input_and_wrong_states_changing_nothing(doorbells, operator):
    run = failed_pricing(doorbells)
    with pytest.raises(InvalidOperation, match="not JSON"):
        run.edit_and_continue(0, {"x": float("nan")}, by=operator)
    with pytest.raises(InvalidOperation, match="no live checkpoint at position 7"):
        run.edit_and_continue(7, 1, by=operator)
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert Checkpoint.objects.filter(run=run, superseded_at__isnull=False).count() == 0
    waiting = Run.objects.start("approval", {})
    doorbells.drain()
    with pytest.raises(InvalidOperation, match="Cannot edit and continue"):
        waiting.edit_and_continue(0, 1, by=operator)
    assert not AuditEntry.objects.filter(action="edit and continue").exists()


def backing_off_run(doorbells) -> Run:
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind) == (Status.WAITING, WaitKind.RETRY)
    return run


def test_retry_now_cuts_the_backoff_short(doorbells, operator):
    run = backing_off_run(doorbells)
    assert run.can_retry_now
    due = run.wake_at
    assert due > timezone.now()
    workflows.PAYMENTS.timeouts_left = 0
    run.retry_now(by=operator, reason="provider is back")
    assert run.status == Status.PENDING
    assert doorbells.drain() == ["succeeded"]
    entry = AuditEntry.objects.get(run=run, action="retry now")
    assert entry.details["position"] == 0
    assert entry.reason == "provider is back"


def test_retry_now_refuses_a_run_that_is_not_backing_off(doorbells, operator):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    run.refresh_from_db()
    with pytest.raises(InvalidOperation, match=r"only a run backing off"):
        run.retry_now(by=operator)
    assert Run.objects.get(pk=run.pk).status == Status.WAITING
    assert not AuditEntry.objects.filter(action="retry now").exists()


def test_a_resume_under_new_code_warns_and_records_the_new_version(doorbells, operator):
    run = failed_pricing(doorbells)
    deployed = registry.get("pricing").version
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    run.refresh_from_db()
    assert "old-build" in run.code_warning() and deployed in run.code_warning()
    run.resume(by=operator)
    run.refresh_from_db()
    assert run.code_version == deployed
    assert run.code_warning() == ""
    entry = AuditEntry.objects.get(run=run, action="resume")
    assert entry.details["code_version"] == {"before": "old-build", "after": deployed}
    assert run.code_versions() == ["old-build", deployed]


def test_a_retry_across_a_signal_waits_for_a_new_one_unless_asked_to_reuse_it(doorbells, operator):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    run.send_signal("approve", {"approved": True, "by": "ann"})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert [s.pk for s in run.signals_received_from(0)] == [run.signals.get().pk]

    run.retry_from(1, by=operator)
    assert doorbells.drain() == ["ok/signal"]  # waiting again, for a new signal
    run.refresh_from_db()
    assert (run.status, run.wait_kind) == (Status.WAITING, WaitKind.SIGNAL)
    run.send_signal("approve", {"approved": True, "by": "bob"})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["by"] == "bob"

    details = run.retry_from(1, by=operator, reuse_signals=True)
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["by"] == "bob"
    assert len(details["reused_signals"]) == 1
    assert run.signals.count() == 3  # the originals are kept, consumed; the reused one is a copy


def test_retry_now_is_refused_once_the_backoff_ended(doorbells, operator):
    run = backing_off_run(doorbells)
    Run.objects.filter(pk=run.pk).update(wake_at=timezone.now() - timedelta(seconds=1))
    run.wake()
    with pytest.raises(InvalidOperation):
        run.retry_now(by=operator)
