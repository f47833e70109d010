"""The run page's recovery actions: edit and continue from a step, and retry now."""

import pytest
from django.urls import reverse

from runs.models import AuditEntry, Run, Status, WaitKind
from tests import workflows
from tests.factories import make_failed_run, make_operator, make_viewer
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "run-live"}
CONFIRMED = {"confirmed": "yes"}


@pytest.fixture
def operator(client, doorbells):
    user = make_operator()
    client.force_login(user)
    return user


def failed_pricing(doorbells) -> Run:
    run = Run.objects.start("pricing", {"name": "widget", "price": -5})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    return run


def backing_off(doorbells) -> Run:
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    return run


def test_it_refuses_viewers_and_gets(client, doorbells):
    run = make_failed_run()
    urls = [
        reverse("checkpoint_edit_and_continue", args=[run.pk, 0]),
        reverse("run_retry_now", args=[run.pk]),
    ]
    client.force_login(make_viewer())
    for url in urls:
        assert client.post(url, {**CONFIRMED, "output": "1"}).status_code == 403
        assert client.get(url).status_code == 405
    assert not AuditEntry.objects.exists()


def test_it_edits_and_continues_after_a_confirmation(client, operator, doorbells):
    run = failed_pricing(doorbells)
    url = reverse("checkpoint_edit_and_continue", args=[run.pk, 0])
    data = {"output": '{"item": "widget", "price": 12}', "reason": "feed typo"}

    confirm = client.post(url, data)
    assert confirm.status_code == 200
    assert "run every step after it again?" in confirm.content.decode()
    assert Run.objects.get(pk=run.pk).status == Status.FAILED

    response = client.post(url, {**data, **CONFIRMED}, **HTMX)
    assert response.status_code == 200
    assert "continues from step 1" in response.content.decode()
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"invoiced": 12}
    entry = AuditEntry.objects.get(run=run, action="edit and continue")
    assert (entry.actor, entry.reason, entry.details["after"]) == (operator, "feed typo", data_after())


def data_after():
    return {"item": "widget", "price": 12}


def test_bad_json_is_shown_in_the_form_and_changes_nothing(client, operator, doorbells):
    run = failed_pricing(doorbells)
    url = reverse("checkpoint_edit_and_continue", args=[run.pk, 0])
    response = client.post(url, {"output": "{price: 12", **CONFIRMED})
    assert response.status_code == 422
    assert "This is not valid JSON" in response.content.decode()
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert not AuditEntry.objects.filter(action="edit and continue").exists()


def test_a_wrong_state_is_a_message_not_an_error(client, operator, doorbells):
    run = backing_off(doorbells)
    url = reverse("checkpoint_edit_and_continue", args=[run.pk, 0])
    response = client.post(url, {"output": "1", **CONFIRMED}, **HTMX)
    assert response.status_code == 409
    assert Run.objects.get(pk=run.pk).status == Status.WAITING


def test_retry_now_from_the_run_page(client, operator, doorbells):
    run = backing_off(doorbells)
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "Retry now" in html
    assert "attempt 1 of 4" in html
    workflows.PAYMENTS.timeouts_left = 0
    response = client.post(reverse("run_retry_now", args=[run.pk]), CONFIRMED, **HTMX)
    assert response.status_code == 200
    assert doorbells.drain() == ["succeeded"]
    assert AuditEntry.objects.filter(run=run, action="retry now", actor=operator).exists()
    again = client.post(reverse("run_retry_now", args=[run.pk]), CONFIRMED, **HTMX)
    assert again.status_code == 409
    assert Run.objects.get(pk=run.pk).wait_kind == WaitKind.NONE


def test_the_confirmation_warns_when_the_code_changed(client, operator, doorbells):
    run = failed_pricing(doorbells)
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    confirm = client.post(reverse("run_resume", args=[run.pk])).content.decode()
    assert "The code changed since this run last ran" in confirm
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "The code changed since this run last ran" in html  # in the button's confirmation


def test_attempts_after_a_resume_are_grouped_and_numbered_apart(client, operator, doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    exhaust_retries(doorbells, rounds=4)
    run = Run.objects.get(pk=run.pk)
    assert run.status == Status.FAILED
    run.resume(by=operator)
    workflows.PAYMENTS.timeouts_left = 1  # one more failure, then it answers
    exhaust_retries(doorbells, rounds=2)
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED

    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "2 attempts (+4 before resuming)" in html  # the header counts what the list shows
    assert 'before resume #1 <span class="count">· 4 failed attempts</span>' in html
    assert 'since resume #1 <span class="count">· 1 failed attempt</span>' in html
    for number in (1, 2, 3, 4):
        assert f"attempt {number} of 4 ·" in html
    assert "attempt 5" not in html  # each group numbered from 1


def test_a_retry_across_a_received_signal_asks_and_can_reuse_it(client, operator, doorbells):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    run.send_signal("approve", {"approved": True, "by": "ann"})
    assert doorbells.drain() == ["succeeded"]
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert html.count('name="reuse_signals"') == 2 * 2  # steps 0 and 1: wait (default) or reuse
    response = client.post(
        reverse("run_retry", args=[run.pk, 1]), {**CONFIRMED, "reuse_signals": "yes"}, **HTMX
    )
    assert "signals it had received are reused" in response.content.decode()
    assert doorbells.drain() == ["succeeded"]
    entry = AuditEntry.objects.get(run=run, action="retry")
    assert len(entry.details["reused_signals"]) == 1
