"""The Django admin: lists, read-only history, actions through the model, audited edits."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from runs.models import AuditEntry, Run, Signal, Status, WorkerProcess
from steps.models import Attempt, Branch, Checkpoint
from tests.factories import make_failed_run, make_operator, make_run, make_user, make_waiting_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(doorbells):
    return User.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def change_data(run: Run, **changes) -> dict:
    """The run admin form as the browser would post it, with `changes` applied."""
    data = {
        "status": run.status,
        "wait_kind": run.wait_kind,
        "wait_signal": run.wait_signal,
        "wait_position": "" if run.wait_position is None else run.wait_position,
        "wake_at_0": "",
        "wake_at_1": "",
        "output": "" if run.output is None else json.dumps(run.output),
        "error_message": run.error_message,
        "audit_reason": "",
        "loaded_version": run.updated_at.isoformat(),
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "model",
    [
        "runs/run",
        "runs/signal",
        "runs/auditentry",
        "runs/workerprocess",
        "steps/checkpoint",
        "steps/attempt",
        "steps/branch",
    ],
)
def test_every_changelist_opens(admin_client, model):
    run = make_failed_run(attempts_per_step=1)
    Signal.objects.create(run=run, name="approve")
    AuditEntry.record(run, "resume", "alice")
    WorkerProcess.objects.create(name="w1", hostname="h", pid=1)
    Branch.objects.create(run=run, position=3, index=0, name="fetch", target="m:f")
    assert admin_client.get(f"/admin/{model}/").status_code == 200
    assert admin_client.get(f"/admin/{model}/?q={run.pk}").status_code == 200
    assert admin_client.get(f"/admin/{model}/?q=not-a-number").status_code == 200


def test_run_changelist_filters_by_status(admin_client):
    failed = make_failed_run()
    make_run(Status.SUCCEEDED)
    response = admin_client.get("/admin/runs/run/?status__exact=failed")
    assert [run.pk for run in response.context["cl"].result_list] == [failed.pk]


def test_the_run_page_links_to_the_dashboard_and_shows_history_read_only(admin_client):
    run = make_failed_run()
    html = admin_client.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert f'href="/runs/{run.pk}/"' in html
    assert 'name="status"' in html
    assert 'name="error_traceback"' not in html  # history is read-only
    assert 'name="workflow"' not in html
    assert "bad value from the tool" in html


def test_runs_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get("/admin/runs/run/add/").status_code == 403


def test_the_resume_action_goes_through_the_model_and_is_audited(admin_client, admin_user):
    failed, done = make_failed_run(), make_run(Status.SUCCEEDED)
    response = admin_client.post(
        "/admin/runs/run/",
        {"action": "resume_runs", "_selected_action": [failed.pk, done.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "Resumed: 1 run(s)." in html
    assert f"Cannot resume run {done.pk}" in html
    assert Run.objects.get(pk=failed.pk).status == Status.PENDING
    assert Run.objects.get(pk=done.pk).status == Status.SUCCEEDED
    entry = AuditEntry.objects.get(action="resume")
    assert (entry.run_id, entry.actor) == (failed.pk, admin_user)


def test_the_cancel_action(admin_client):
    run = make_waiting_run()
    admin_client.post("/admin/runs/run/", {"action": "cancel_runs", "_selected_action": [run.pk]})
    assert Run.objects.get(pk=run.pk).status == Status.CANCELLED
    assert AuditEntry.objects.filter(run=run, action="cancel").exists()


def test_actions_need_the_operate_permission(client):
    clerk = make_user("clerk", "view_run", "change_run", staff=True)
    client.force_login(clerk)
    run = make_failed_run()
    response = client.get("/admin/runs/run/")
    assert "resume_runs" not in response.content.decode()
    client.post("/admin/runs/run/", {"action": "resume_runs", "_selected_action": [run.pk]})
    assert Run.objects.get(pk=run.pk).status == Status.FAILED

    operator = make_operator("olga", staff=True)
    client.force_login(operator)
    assert "resume_runs" in client.get("/admin/runs/run/").content.decode()


def test_a_status_change_offers_only_the_moves_the_state_machine_allows(admin_client):
    run = make_run(Status.SUCCEEDED, 2)
    html = admin_client.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    offered = set(re.findall(r'<option value="(\w+)"', html.split('name="status"')[1].split("</select>")[0]))
    assert offered == {"succeeded", "pending", "queued"}
    response = admin_client.post(f"/admin/runs/run/{run.pk}/change/", change_data(run, status="waiting"))
    assert response.status_code == 200  # the form says the choice is not available
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "waiting", "wait_kind": "signal"}, "needs the signal"),
        ({"status": "waiting", "wait_kind": "sleep"}, "needs its wake time"),
        ({"status": "succeeded"}, "needs an output"),
        ({"status": "failed", "error_message": ""}, "needs an error message"),
    ],
    ids=["signal-wait", "sleep", "succeeded", "failed"],
)
def test_a_status_change_needs_what_its_target_needs(admin_client, changes, message):
    run = make_run(Status.RUNNING, 1, lease_owner="w", lease_token="t")
    response = admin_client.post(
        f"/admin/runs/run/{run.pk}/change/", change_data(run, **changes), follow=True
    )
    assert message in response.content.decode()
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING
    assert not AuditEntry.objects.exists()


def test_marking_a_stuck_run_succeeded_clears_its_error_and_is_audited(admin_client, admin_user):
    run = make_run(Status.RUNNING, 2, lease_owner="dead-worker", lease_token="t0", error_type="Boom")
    data = change_data(run, status="succeeded", output='{"done": true}', audit_reason="finished by hand")
    response = admin_client.post(f"/admin/runs/run/{run.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    run.refresh_from_db()
    assert (run.status, run.output, run.error_type, run.lease_token) == ("succeeded", {"done": True}, "", "")
    entry = AuditEntry.objects.get(run=run, action="set state")
    assert entry.actor == admin_user
    assert entry.reason == "finished by hand"
    assert entry.details["changed"]["status"] == {"before": "running", "after": "succeeded"}
    assert entry.details["changed"]["lease_owner"] == {"before": "dead-worker", "after": ""}
    assert entry.details["changed"]["output"] == {"before": None, "after": {"done": True}}


def test_a_signal_wait_set_by_hand_wakes_on_its_signal(admin_client, doorbells):
    run = make_run(Status.RUNNING, 1, lease_owner="gone", lease_token="t")
    data = change_data(run, status="waiting", wait_kind="signal", wait_signal="approve", wait_position=1)
    assert admin_client.post(f"/admin/runs/run/{run.pk}/change/", data).status_code == 302
    run.refresh_from_db()
    assert (run.status, run.wait_kind, run.wait_signal, run.wait_position) == (
        "waiting",
        "signal",
        "approve",
        1,
    )


def test_admin_actions_retry_from_a_step_and_mark_failed_with_a_reason(admin_client, doorbells):
    done = make_run(Status.SUCCEEDED, 3)
    waiting = make_waiting_run()
    url = "/admin/runs/run/"
    admin_client.post(
        url, {"action": "retry_runs", "_selected_action": [done.pk], "position": "1", "reason": "again"}
    )
    done.refresh_from_db()
    assert (done.status, done.epoch) == (Status.PENDING, 1)
    assert AuditEntry.objects.get(run=done, action="retry").reason == "again"
    admin_client.post(
        url, {"action": "mark_failed_runs", "_selected_action": [waiting.pk], "reason": "no reply"}
    )
    waiting.refresh_from_db()
    assert (waiting.status, waiting.error_type, waiting.error_message) == (
        "failed",
        "MarkedFailed",
        "no reply",
    )


def test_runs_and_worker_rows_cannot_be_deleted_and_a_deleted_signal_is_audited(admin_client):
    run = make_waiting_run()
    assert admin_client.get(f"/admin/runs/run/{run.pk}/delete/").status_code == 403
    WorkerProcess.beat("w:1:a", "w", 1)
    assert admin_client.get("/admin/runs/workerprocess/w:1:a/delete/").status_code == 403
    signal = Signal.objects.create(run=run, name="approve", payload={"ok": True})
    admin_client.post(f"/admin/runs/signal/{signal.pk}/delete/", {"post": "yes"})
    assert not Signal.objects.filter(pk=signal.pk).exists()
    entry = AuditEntry.objects.get(action="admin delete signal")
    assert (entry.run_id, entry.details["payload"]) == (run.pk, {"ok": True})


def test_a_save_that_changes_nothing_says_so(admin_client):
    run = make_failed_run()
    response = admin_client.post(f"/admin/runs/run/{run.pk}/change/", change_data(run), follow=True)
    assert "Nothing changed" in response.content.decode()
    assert "was changed successfully" not in response.content.decode()


def test_setting_a_run_to_pending_dispatches_it(admin_client, django_capture_on_commit_callbacks, doorbells):
    run = make_run(Status.RUNNING, 1, lease_owner="gone")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"/admin/runs/run/{run.pk}/change/", change_data(run, status="pending"))
    run.refresh_from_db()
    assert run.status == Status.PENDING
    assert run.dispatched_at is not None
    assert doorbells.rung == [run.pk]


def test_saving_without_changes_writes_no_audit_entry(admin_client):
    run = make_failed_run()
    admin_client.post(f"/admin/runs/run/{run.pk}/change/", change_data(run))
    assert not AuditEntry.objects.exists()


def test_a_stale_form_is_refused(admin_client):
    run = make_run(Status.RUNNING, 1, lease_owner="w1")
    stale = change_data(run, lease_owner="")
    Run.objects.filter(pk=run.pk).update(steps_done=2, updated_at=timezone.now() + timedelta(seconds=1))
    response = admin_client.post(f"/admin/runs/run/{run.pk}/change/", stale)
    assert response.status_code == 200
    assert "This run changed while you were editing it" in response.content.decode()
    assert Run.objects.get(pk=run.pk).lease_owner == "w1"
    assert not AuditEntry.objects.exists()


# --- checkpoints ------------------------------------------------------------------------


def test_editing_a_checkpoint_output_goes_through_edit_checkpoint(admin_client, admin_user):
    run = make_failed_run(steps=3)
    checkpoint = Checkpoint.objects.get(run=run, position=1)
    url = f"/admin/steps/checkpoint/{checkpoint.pk}/change/"
    assert 'name="output"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"output": '{"value": 7}', "audit_reason": "typo in tool answer"})
    assert response.status_code == 302
    checkpoint.refresh_from_db()
    assert checkpoint.superseded_at is not None
    assert checkpoint.output == {"value": 1}
    assert Checkpoint.objects.live().get(run=run, position=1).output == {"value": 7}
    assert Run.objects.get(pk=run.pk).status == Status.PENDING
    entry = AuditEntry.objects.get(action="edit")
    assert (entry.actor, entry.reason, entry.details["after"]) == (
        admin_user,
        "typo in tool answer",
        {"value": 7},
    )


@pytest.mark.parametrize("text", ["{not json", "NaN", "[1, Infinity]"])
def test_checkpoint_output_must_be_valid_json(admin_client, text):
    run = make_failed_run(steps=2)
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    response = admin_client.post(f"/admin/steps/checkpoint/{checkpoint.pk}/change/", {"output": text})
    assert response.status_code == 200
    assert "not valid JSON" in response.content.decode()
    assert Checkpoint.objects.live().get(run=run, position=0).output == {"value": 0}


def test_checkpoints_of_a_running_run_are_read_only(admin_client):
    run = make_run(Status.RUNNING, 2)
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    url = f"/admin/steps/checkpoint/{checkpoint.pk}/change/"
    assert 'name="output"' not in admin_client.get(url).content.decode()
    admin_client.post(url, {"output": "1", "continue_from_here": "on"})
    assert Checkpoint.objects.live().get(run=run, position=0).output == {"value": 0}
    assert not AuditEntry.objects.exists()


def test_a_succeeded_runs_checkpoint_is_edited_only_to_continue_from_it(admin_client, admin_user):
    run = make_run(Status.SUCCEEDED, 3)
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    url = f"/admin/steps/checkpoint/{checkpoint.pk}/change/"
    assert 'name="continue_from_here"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"output": "1"})  # replacing alone would replay the old values
    assert "can be edited and continued" in response.content.decode()
    assert not AuditEntry.objects.exists()
    response = admin_client.post(url, {"output": "1", "continue_from_here": "on", "audit_reason": "fix"})
    assert response.status_code == 302
    assert Checkpoint.objects.live().get(run=run, position=0).output == 1
    assert not Checkpoint.objects.live().filter(run=run, position__gt=0).exists()  # run again
    entry = AuditEntry.objects.get(action="edit and continue")
    assert (entry.actor, entry.reason, entry.details["superseded"]) == (admin_user, "fix", 2)


def test_checkpoints_and_attempts_cannot_be_deleted_or_added(admin_client):
    run = make_failed_run(attempts_per_step=1)
    checkpoint = run.checkpoints.first()
    attempt = Attempt.objects.filter(run=run).first()
    assert admin_client.get("/admin/steps/checkpoint/add/").status_code == 403
    assert admin_client.get(f"/admin/steps/checkpoint/{checkpoint.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/steps/attempt/{attempt.pk}/delete/").status_code == 403
    html = admin_client.get(f"/admin/steps/attempt/{attempt.pk}/change/").content.decode()
    assert 'name="error_message"' not in html  # view only


def test_the_live_filter(admin_client):
    run = make_run(Status.SUCCEEDED, 2)
    Checkpoint.objects.filter(run=run, position=1).update(superseded_at=timezone.now())
    response = admin_client.get("/admin/steps/checkpoint/?live=no")
    assert [c.position for c in response.context["cl"].result_list] == [1]


# --- signals and the audit log ------------------------------------------------------------


def test_adding_a_signal_sends_it_through_the_model(admin_client, admin_user):
    run = make_waiting_run()
    response = admin_client.post(
        "/admin/runs/signal/add/",
        {"run": run.pk, "name": "approve", "payload": '{"approved": true}', "audit_reason": "by phone"},
    )
    assert response.status_code == 302
    signal = Signal.objects.get()
    assert (signal.payload, signal.sent_by) == ({"approved": True}, "root")
    assert AuditEntry.objects.get(action="signal").reason == "by phone"


def test_a_signal_to_a_finished_run_is_refused(admin_client):
    run = make_run(Status.SUCCEEDED)
    response = admin_client.post(
        "/admin/runs/signal/add/", {"run": run.pk, "name": "approve", "payload": "{}"}
    )
    assert response.status_code == 200
    assert "only unfinished runs take signals" in response.content.decode()
    assert not Signal.objects.exists()


def test_signal_payload_must_be_valid_json(admin_client):
    run = make_waiting_run()
    response = admin_client.post("/admin/runs/signal/add/", {"run": run.pk, "name": "a", "payload": "{x"})
    assert "not valid JSON" in response.content.decode()
    assert not Signal.objects.exists()


def test_the_audit_log_is_read_only(admin_client):
    run = make_failed_run()
    entry = AuditEntry.record(run, "resume", "alice", reason="why")
    html = admin_client.get(f"/admin/runs/auditentry/{entry.pk}/change/").content.decode()
    assert 'name="reason"' not in html
    assert admin_client.post(f"/admin/runs/auditentry/{entry.pk}/change/", {"reason": "x"}).status_code == 403
    assert admin_client.get(f"/admin/runs/auditentry/{entry.pk}/delete/").status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).reason == "why"


@pytest.mark.parametrize(
    "text",
    ["[" * 1000 + "]" * 1000, '{"a": NaN}', "[1,", '"' + "x" * 2_000_000 + '"', '"\\u0000"'],
    ids=["deep", "nan", "truncated", "huge", "nul"],
)
def test_hostile_output_in_the_run_form_is_refused_in_place(admin_client, text):
    run = make_run(Status.RUNNING, 1, lease_owner="w", lease_token="t")
    response = admin_client.post(
        f"/admin/runs/run/{run.pk}/change/", change_data(run, status="succeeded", output=text), follow=True
    )
    assert response.status_code == 200
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING
    assert not AuditEntry.objects.exists()
