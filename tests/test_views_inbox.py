"""The inbox: runs waiting for a person, what each asks, and decisions taken in place."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from runs.models import AuditEntry, Signal, Status
from steps.models import Checkpoint, CheckpointStatus
from tests.factories import make_failed_run, make_operator, make_run, make_user, make_viewer, make_waiting_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "inbox-list"}
XSS = "<script>window.__xss=1</script>"


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


@pytest.fixture
def operator_client(client):
    client.force_login(make_operator())
    return client


def waiting_with_proposal(summary: str = "Refund $320 for order A-7.", **fields):
    run = make_waiting_run("approval", **fields)
    Checkpoint.objects.filter(run=run, position=0).update(
        name="llm:prepare", output={"data": {"summary": summary, "risk": "high"}, "text": "..."}
    )
    assert Checkpoint.objects.filter(run=run, position=0, status=CheckpointStatus.SUCCEEDED).exists()
    return run


def test_it_lists_runs_waiting_for_a_decision_nearest_deadline_first(viewer_client):
    now = timezone.now()
    later = waiting_with_proposal(wake_at=now + timedelta(hours=5))
    sooner = waiting_with_proposal(wake_at=now + timedelta(minutes=5))
    never = waiting_with_proposal()
    make_failed_run()
    response = viewer_client.get(reverse("inbox"))
    assert [run.pk for run in response.context["runs"]] == [sooner.pk, later.pk, never.pk]
    html = response.content.decode()
    assert "Refund $320 for order A-7." in html
    assert "&quot;risk&quot;: &quot;high&quot;" in html or "&quot;risk&quot;:&quot;high&quot;" in html


def test_the_navigation_counts_the_inbox(viewer_client):
    waiting_with_proposal()
    waiting_with_proposal()
    html = viewer_client.get(reverse("run_list")).content.decode()
    assert '<span class="nav-count" title="runs waiting for a decision">2</span>' in html


def test_what_is_asked_is_escaped(viewer_client):
    waiting_with_proposal(summary=XSS)
    html = viewer_client.get(reverse("inbox")).content.decode()
    assert XSS not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_viewers_see_no_decision_buttons(viewer_client):
    waiting_with_proposal()
    html = viewer_client.get(reverse("inbox")).content.decode()
    assert 'value="approve"' not in html


def test_approve_in_place_sends_the_signal_and_writes_the_audit(operator_client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    data = {"decision": "approve", "reason": "fine", "at": run.wait_position, "confirmed": "yes"}
    response = operator_client.post(url, data, **HTMX)
    assert response.status_code == 200
    assert f"Run {run.pk} approved" in response.content.decode()
    signal = run.signals.get()
    assert signal.name == "approval"
    assert signal.payload == {"approved": True, "note": "fine", "by": "otto"}
    entry = AuditEntry.objects.get(run=run, action="decide")
    assert entry.actor_name == "otto" and entry.reason == "fine"


def test_reject_without_a_reason_says_who(operator_client):
    run = waiting_with_proposal()
    operator_client.post(
        reverse("inbox_decide", args=[run.pk]), {"decision": "reject", "confirmed": "yes"}, **HTMX
    )
    assert run.signals.get().payload == {"approved": False, "note": "rejected by otto", "by": "otto"}


def test_a_json_payload_goes_through_jsoninput_and_bad_json_is_kept_and_explained(operator_client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    bad = {"decision": "payload", "payload": "{approved: yes", "confirmed": "yes"}
    response = operator_client.post(url, bad, **HTMX)
    assert response.status_code == 422
    html = response.content.decode()
    assert "not valid JSON" in html
    assert "{approved: yes</textarea>" in html  # nothing typed is lost
    assert not run.signals.exists()

    good = {"decision": "payload", "payload": '{"approved": true, "cap_cents": 100}', "confirmed": "yes"}
    assert operator_client.post(url, good, **HTMX).status_code == 200
    assert run.signals.get().payload == {"approved": True, "cap_cents": 100}


def test_a_second_decision_is_refused(operator_client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    data = {"decision": "approve", "at": run.wait_position, "confirmed": "yes"}
    assert operator_client.post(url, data, **HTMX).status_code == 200
    second = operator_client.post(url, {**data, "decision": "reject"}, **HTMX)
    assert second.status_code == 409
    assert "no longer waits" in second.content.decode()  # the first one woke it
    assert run.signals.count() == 1


def test_a_decision_is_refused_while_an_earlier_answer_awaits_pickup(operator_client):
    run = waiting_with_proposal()
    Signal.objects.create(run=run, name="approval", payload={"approved": True}, sent_by="api")
    url = reverse("inbox_decide", args=[run.pk])
    data = {"decision": "reject", "at": run.wait_position, "confirmed": "yes"}
    response = operator_client.post(url, data, **HTMX)
    assert response.status_code == 409
    assert "answered already" in response.content.decode()
    assert run.signals.count() == 1


def test_a_decision_for_a_wait_that_moved_on_is_refused(operator_client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    response = operator_client.post(url, {"decision": "approve", "at": 7, "confirmed": "yes"}, **HTMX)
    assert response.status_code == 409
    assert "no longer waits" in response.content.decode()
    assert not run.signals.exists()


def test_without_javascript_it_asks_to_confirm_showing_the_proposal_then_lands_on_the_run(operator_client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    confirm = operator_client.post(url, {"decision": "approve"})
    html = confirm.content.decode()
    assert confirm.status_code == 200
    assert f"Approve run {run.pk}" in html and "Refund $320 for order A-7." in html
    assert not run.signals.exists()
    done = operator_client.post(url, {"decision": "approve", "confirmed": "yes"})
    assert done.status_code == 303 and done["Location"] == reverse("run_detail", args=[run.pk])
    assert run.signals.get().payload["approved"] is True


def test_it_needs_the_operate_permission_and_a_post(viewer_client, client):
    run = waiting_with_proposal()
    url = reverse("inbox_decide", args=[run.pk])
    assert viewer_client.post(url, {"decision": "approve", "confirmed": "yes"}).status_code == 403
    assert viewer_client.get(url).status_code == 405
    client.force_login(make_user("stranger"))
    assert client.get(reverse("inbox")).status_code == 403
    assert not run.signals.exists()


def test_a_finished_run_cannot_be_decided(operator_client):
    run = make_run(Status.SUCCEEDED)
    response = operator_client.post(
        reverse("inbox_decide", args=[run.pk]), {"decision": "approve", "confirmed": "yes"}, **HTMX
    )
    assert response.status_code == 409
    assert not run.signals.exists()


def test_each_decision_is_confirmed_in_its_own_dialog_with_the_reason_inside(operator_client):
    run = waiting_with_proposal()
    html = operator_client.get(reverse("inbox")).content.decode()
    assert "hx-confirm" not in html  # not the browser's own confirm()
    item = html[html.index(f'id="inbox-{run.pk}"') :]
    forms = item[: item.index("</article>")].split("<form ")[1:]
    assert len(forms) == 3  # approve, reject, a JSON payload
    for form, verb in zip(forms, ["approve", "reject", "send"], strict=True):
        assert "data-confirm" in form[: form.index(">")]
        dialog = form[form.index("<dialog") : form.index("</dialog>")]
        assert f"run #{run.pk}" in dialog
        assert 'name="reason"' in dialog and f"Yes, {verb}" in dialog
