"""Operator actions on the run page: resume, retry from a step, cancel, signal, edit a step's output."""

import pytest
from django.urls import reverse

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import AuditEntry, Run, Signal, Status
from steps.models import Checkpoint
from tests import factories
from tests.factories import (
    make_failed_run,
    make_operator,
    make_run,
    make_user,
    make_viewer,
    make_waiting_run,
)

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "run-live"}
CONFIRMED = {"confirmed": "yes"}


@pytest.fixture
def operator(client, doorbells):
    user = make_operator()
    client.force_login(user)
    return user


def action_urls(run) -> list[str]:
    return [
        reverse("run_resume", args=[run.pk]),
        reverse("run_cancel", args=[run.pk]),
        reverse("run_terminate", args=[run.pk]),
        reverse("run_signal", args=[run.pk]),
        reverse("run_retry", args=[run.pk, 0]),
        reverse("checkpoint_edit", args=[run.pk, 0]),
        reverse("run_bulk"),
    ]


# --- access ---------------------------------------------------------------------------


def test_viewers_get_403_on_every_action(client, doorbells):
    client.force_login(make_viewer())
    run = make_failed_run()
    for url in action_urls(run):
        response = client.post(
            url, {**CONFIRMED, "name": "x", "output": "1", "action": "resume", "run": run.pk}
        )
        assert response.status_code == 403, url
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert not AuditEntry.objects.exists()


def test_a_get_on_an_action_is_405(client):
    client.force_login(make_operator())
    run = make_failed_run()
    for url in action_urls(run):
        assert client.get(url).status_code == 405, url


def test_anonymous_posts_go_to_the_login_page(client):
    run = make_failed_run()
    for url in action_urls(run):
        response = client.post(url, CONFIRMED)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/")


def test_actions_need_the_csrf_token(doorbells):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(make_operator())
    run = make_failed_run()
    assert client.post(reverse("run_resume", args=[run.pk]), CONFIRMED).status_code == 403


def test_a_user_with_view_but_not_operate_cannot_act_even_with_change_run(client, doorbells):
    client.force_login(make_user("clerk", "view_run", "change_run"))
    run = make_failed_run()
    assert client.post(reverse("run_resume", args=[run.pk]), CONFIRMED).status_code == 403


# --- confirmation ------------------------------------------------------------------------


def test_without_javascript_an_action_asks_to_confirm_first(client, operator):
    run = make_failed_run()
    response = client.post(reverse("run_resume", args=[run.pk]), {"reason": "upstream fixed"})
    html = response.content.decode()
    assert response.status_code == 200
    assert f"Resume run {run.pk} (arithmetic)?" in html
    assert '<input type="hidden" name="confirmed" value="yes">' in html
    assert 'value="upstream fixed"' in html
    assert Run.objects.get(pk=run.pk).status == Status.FAILED  # nothing happened yet


def test_the_confirmation_carries_the_other_fields(client, operator):
    run = make_waiting_run()
    response = client.post(reverse("run_signal", args=[run.pk]), {"name": "approve", "payload": '{"ok": 1}'})
    html = response.content.decode()
    assert '<input type="hidden" name="name" value="approve">' in html
    assert '<input type="hidden" name="payload" value="{&quot;ok&quot;: 1}">' in html
    assert not Signal.objects.exists()


# --- resume ------------------------------------------------------------------------------


def test_resume_through_htmx_updates_the_page_in_place(
    client, operator, doorbells, django_capture_on_commit_callbacks
):
    run = make_failed_run()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run_resume", args=[run.pk]), {**CONFIRMED, "reason": "fixed"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="run-live"')
    assert f"Run {run.pk} resumed." in html
    assert 'id="run-status">pending<' in html
    run.refresh_from_db()
    assert run.status == Status.PENDING
    entry = AuditEntry.objects.get(run=run, action="resume")
    assert (entry.actor, entry.reason) == (operator, "fixed")
    assert doorbells.rung == [run.pk]


def test_resume_without_javascript_redirects_back_with_a_message(client, operator):
    run = make_failed_run()
    response = client.post(reverse("run_resume", args=[run.pk]), CONFIRMED)
    assert response.status_code == 303
    assert response["Location"] == reverse("run_detail", args=[run.pk])
    assert f"Run {run.pk} resumed." in client.get(response["Location"]).content.decode()


def test_resuming_a_succeeded_run_is_a_clear_message_not_a_500(client, operator):
    run = make_run(Status.SUCCEEDED)
    response = client.post(reverse("run_resume", args=[run.pk]), CONFIRMED, **HTMX)
    assert response.status_code == 409
    html = response.content.decode()
    assert f"Cannot resume run {run.pk}: it is succeeded" in html
    assert 'class="msg error"' in html
    assert not AuditEntry.objects.filter(action="resume").exists()

    plain = client.post(reverse("run_resume", args=[run.pk]), CONFIRMED, follow=True)
    assert "Cannot resume run" in plain.content.decode()


def test_a_too_long_reason_is_refused(client, operator):
    run = make_failed_run()
    response = client.post(reverse("run_resume", args=[run.pk]), {**CONFIRMED, "reason": "x" * 1001}, **HTMX)
    assert response.status_code == 422
    assert "at most 1000 characters" in response.content.decode()
    assert Run.objects.get(pk=run.pk).status == Status.FAILED


@pytest.mark.django_db(transaction=True)
def test_resume_executes_the_run_to_success(client, operator, doorbells):
    factories.FLAKY["fail"] = True
    run = Run.objects.start("dashboard_flaky", {"order": "A-1"})
    doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "NonRetryableError"

    factories.FLAKY["fail"] = False
    try:
        client.post(reverse("run_resume", args=[run.pk]), CONFIRMED, **HTMX)
        doorbells.drain()
    finally:
        factories.FLAKY["fail"] = True
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output == {"booked": 1290}
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "superseded" in html  # the failed checkpoint stays visible


# --- retry from a step ----------------------------------------------------------------------


def test_retry_from_a_middle_step_supersedes_it_and_the_later_ones(client, operator, doorbells):
    run = make_run(Status.SUCCEEDED, 4)
    response = client.post(
        reverse("run_retry", args=[run.pk, 2]), {**CONFIRMED, "reason": "bad data"}, **HTMX
    )
    assert response.status_code == 200
    assert "retrying from step 2" in response.content.decode()
    run.refresh_from_db()
    assert (run.status, run.steps_done, run.epoch) == (Status.PENDING, 2, 1)
    superseded = Checkpoint.objects.filter(run=run, superseded_at__isnull=False)
    assert sorted(superseded.values_list("position", flat=True)) == [2, 3]
    assert AuditEntry.objects.get(run=run, action="retry").details["from_position"] == 2


def test_retry_from_a_step_that_does_not_exist_is_a_message(client, operator):
    run = make_run(Status.SUCCEEDED, 2)
    response = client.post(reverse("run_retry", args=[run.pk, 7]), CONFIRMED, **HTMX)
    assert response.status_code == 409
    assert "has no step at position 7" in response.content.decode()


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_a_waiting_run(client, operator):
    run = make_waiting_run()
    response = client.post(reverse("run_cancel", args=[run.pk]), CONFIRMED, **HTMX)
    assert f"Run {run.pk} cancelled." in response.content.decode()
    assert Run.objects.get(pk=run.pk).status == Status.CANCELLED


def test_cancel_a_running_run_asks_its_worker_to_interrupt_the_step(client, operator):
    run = make_run(Status.RUNNING, 1, lease_owner="w1", lease_token="t")
    response = client.post(reverse("run_cancel", args=[run.pk]), CONFIRMED, **HTMX)
    assert "stops now, interrupting its running step" in response.content.decode()
    run.refresh_from_db()
    assert (run.status, run.cancel_requested) == (Status.RUNNING, True)


def test_terminate_a_running_run(client, operator):
    run = make_run(Status.RUNNING, 1, lease_owner="w1", lease_token="t")
    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert reverse("run_terminate", args=[run.pk]) in page
    response = client.post(reverse("run_terminate", args=[run.pk]), CONFIRMED, **HTMX)
    assert f"Terminating run {run.pk}" in response.content.decode()
    run.refresh_from_db()
    assert (run.status, run.terminate_requested) == (Status.RUNNING, True)
    assert AuditEntry.objects.filter(run=run, action="terminate", actor=operator).exists()


def test_terminate_a_run_that_is_not_running_is_a_message(client, operator):
    run = make_waiting_run()
    response = client.post(reverse("run_terminate", args=[run.pk]), CONFIRMED, **HTMX)
    assert response.status_code == 409
    assert "only a running run can be terminated" in response.content.decode()


def test_cancel_a_finished_run_is_a_message(client, operator):
    run = make_run(Status.SUCCEEDED)
    response = client.post(reverse("run_cancel", args=[run.pk]), CONFIRMED, **HTMX)
    assert response.status_code == 409
    assert "Cannot cancel run" in response.content.decode()


# --- signals ---------------------------------------------------------------------------------


def test_send_a_signal_with_a_json_payload(client, operator):
    run = make_waiting_run()
    data = {**CONFIRMED, "name": "approve", "payload": '{"approved": true, "by": "otto"}', "reason": "ok'd"}
    response = client.post(reverse("run_signal", args=[run.pk]), data, **HTMX)
    assert response.status_code == 200
    signal = Signal.objects.get(run=run)
    assert (signal.name, signal.payload, signal.sent_by) == (
        "approve",
        {"approved": True, "by": "otto"},
        "otto",
    )
    assert AuditEntry.objects.get(run=run, action="signal").reason == "ok'd"


def test_invalid_json_is_a_clear_error_and_changes_nothing(client, operator):
    run = make_waiting_run()
    data = {**CONFIRMED, "name": "approve", "payload": "{approved: yes"}
    response = client.post(reverse("run_signal", args=[run.pk]), data, **HTMX)
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#signal-form"
    html = response.content.decode()
    assert "This is not valid JSON" in html
    assert "{approved: yes</textarea>" in html  # what was typed stays in the box
    assert not Signal.objects.exists()
    assert not AuditEntry.objects.exists()

    plain = client.post(reverse("run_signal", args=[run.pk]), data)
    assert plain.status_code == 422
    assert "This is not valid JSON" in plain.content.decode()


def test_nan_is_not_json(client, operator):
    run = make_waiting_run()
    response = client.post(
        reverse("run_signal", args=[run.pk]), {**CONFIRMED, "name": "go", "payload": "NaN"}
    )
    assert response.status_code == 422
    assert "NaN is not allowed" in response.content.decode()


def test_an_empty_payload_sends_null(client, operator):
    run = make_waiting_run()
    client.post(reverse("run_signal", args=[run.pk]), {**CONFIRMED, "name": "approve", "payload": ""}, **HTMX)
    assert Signal.objects.get(run=run).payload is None


def test_signalling_a_finished_run_is_a_message(client, operator):
    run = make_run(Status.SUCCEEDED)
    response = client.post(reverse("run_signal", args=[run.pk]), {**CONFIRMED, "name": "approve"}, **HTMX)
    assert response.status_code == 409
    assert "Cannot signal run" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_approve_a_waiting_run(client, operator, doorbells):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    run.refresh_from_db()
    assert (run.status, run.wait_signal) == (Status.WAITING, "approve")

    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert ">Approve</button>" in page
    payload = '{"approved": true, "by": "otto"}'
    client.post(
        reverse("run_signal", args=[run.pk]), {**CONFIRMED, "name": "approve", "payload": payload}, **HTMX
    )
    doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output == {"plan": 42, "outcome": "done", "by": "otto"}


# --- edit a step's output ----------------------------------------------------------------------


def test_edit_a_checkpoint_then_resume(client, operator, doorbells):
    run = make_failed_run(steps=3)
    data = {**CONFIRMED, "output": '{"value": 99}', "reason": "tool answer was wrong"}
    response = client.post(reverse("checkpoint_edit", args=[run.pk, 1]), data, **HTMX)
    assert response.status_code == 200
    assert "Step 1 output replaced" in response.content.decode()
    run.refresh_from_db()
    assert run.status == Status.PENDING
    live = Checkpoint.objects.live().get(run=run, position=1)
    assert live.output == {"value": 99}
    assert live.edited_from.output == {"value": 1}
    assert live.edited_from.superseded_at is not None
    edit = AuditEntry.objects.get(run=run, action="edit")
    assert (edit.details["before"], edit.details["after"], edit.reason) == (
        {"value": 1},
        {"value": 99},
        "tool answer was wrong",
    )


def test_edit_with_invalid_json_shows_the_error_in_the_form(client, operator):
    run = make_failed_run(steps=3)
    checkpoint = Checkpoint.objects.get(run=run, position=1)
    response = client.post(
        reverse("checkpoint_edit", args=[run.pk, 1]), {**CONFIRMED, "output": "{'a': 1}"}, **HTMX
    )
    assert response.status_code == 422
    assert response["HX-Retarget"] == f"#edit-form-{checkpoint.pk}"
    assert "This is not valid JSON" in response.content.decode()
    assert Checkpoint.objects.live().get(run=run, position=1).output == {"value": 1}
    assert Run.objects.get(pk=run.pk).status == Status.FAILED

    plain = client.post(reverse("checkpoint_edit", args=[run.pk, 1]), {**CONFIRMED, "output": ""})
    assert plain.status_code == 422
    assert "This field is required." in plain.content.decode()


def test_edit_on_a_succeeded_run_is_a_message(client, operator):
    run = make_run(Status.SUCCEEDED, 2)
    response = client.post(reverse("checkpoint_edit", args=[run.pk, 0]), {**CONFIRMED, "output": "1"}, **HTMX)
    assert response.status_code == 409
    assert "Cannot edit and resume run" in response.content.decode()


def test_edit_at_a_position_without_a_checkpoint_is_a_message(client, operator):
    run = make_failed_run(steps=2)
    response = client.post(reverse("checkpoint_edit", args=[run.pk, 9]), {**CONFIRMED, "output": "1"}, **HTMX)
    assert response.status_code == 409
    assert "no live checkpoint at position 9" in response.content.decode()


def test_edit_without_javascript_returns_to_the_run_page(client, operator):
    run = make_failed_run(steps=2)
    response = client.post(reverse("checkpoint_edit", args=[run.pk, 0]), {**CONFIRMED, "output": "[1, 2]"})
    assert response.status_code == 303
    assert response["Location"] == reverse("run_detail", args=[run.pk])
