"""Bulk resume and cancel from the run list: a count and a confirmation, then the work."""

import pytest
from django.urls import reverse

from runs import forms
from runs.models import AuditEntry, Run, Status
from tests.factories import make_failed_run, make_operator, make_run, make_viewer, make_waiting_run

pytestmark = pytest.mark.django_db

URL = reverse("run_bulk")


@pytest.fixture
def operator(client, doorbells):
    user = make_operator()
    client.force_login(user)
    return user


def statuses(*runs) -> list[str]:
    return [Run.objects.get(pk=run.pk).status for run in runs]


def test_viewers_get_403(client):
    client.force_login(make_viewer())
    run = make_failed_run()
    response = client.post(
        URL, {"action": "resume", "scope": "selected", "run": [run.pk], "confirmed": "yes"}
    )
    assert response.status_code == 403
    assert statuses(run) == [Status.FAILED]


def test_a_get_is_405(client):
    client.force_login(make_operator())
    assert client.get(URL).status_code == 405


def test_it_counts_and_asks_before_acting(client, operator):
    failed, dead, done = make_failed_run(), make_run(Status.DEAD, 1), make_run(Status.SUCCEEDED)
    data = {"action": "resume", "scope": "selected", "run": [failed.pk, dead.pk, done.pk]}
    response = client.post(URL, data)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Resume 2 runs?" in html
    assert "You selected 3 runs." in html
    assert "1 in other states will be left alone." in html
    assert '<input type="hidden" name="confirmed" value="yes">' in html
    assert statuses(failed, dead) == [Status.FAILED, Status.DEAD]


def test_the_confirmation_is_a_fragment_for_htmx(client, operator):
    run = make_failed_run()
    data = {"action": "resume", "scope": "selected", "run": [run.pk]}
    response = client.post(URL, data, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="bulk-panel")
    html = response.content.decode()
    # the list's confirmation <dialog>, opened at once, with the count and the reason inside
    assert html.lstrip().startswith('<form method="post" action="/runs/bulk/" hx-post="/runs/bulk/"')
    assert "data-confirm-open" in html
    dialog = html[html.index("<dialog") :]
    assert "Resume 1 run?" in dialog and "You selected 1 run." in dialog
    assert 'name="reason"' in dialog and "Yes, resume" in dialog


def test_the_confirmation_warns_of_runs_that_ran_other_code(client, operator):
    old = make_failed_run(code_version="old-build")
    current = make_failed_run()
    data = {"action": "resume", "scope": "selected", "run": [old.pk, current.pk]}
    for headers in ({}, {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "bulk-panel"}):
        html = client.post(URL, data, **headers).content.decode()
        assert "1 run(s) of arithmetic ran code version old-build" in html


def test_the_htmx_confirmation_has_no_reason_where_nothing_can_be_done(client, operator):
    run = make_run(Status.SUCCEEDED)
    data = {"action": "resume", "scope": "selected", "run": [run.pk]}
    html = client.post(URL, data, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="bulk-panel").content.decode()
    assert "None of them can be resumed" in html
    assert 'name="reason"' not in html and "Yes, resume" not in html
    assert ">Close</button>" in html


def test_confirmed_it_resumes_the_eligible_runs_and_audits_each(client, operator):
    failed, dead, done = make_failed_run(), make_run(Status.DEAD, 1), make_run(Status.SUCCEEDED)
    data = {
        "action": "resume",
        "scope": "selected",
        "run": [failed.pk, dead.pk, done.pk],
        "confirmed": "yes",
        "reason": "provider back",
    }
    response = client.post(URL, data)
    assert response.status_code == 303
    assert response["Location"] == "/"
    assert statuses(failed, dead, done) == [Status.PENDING, Status.PENDING, Status.SUCCEEDED]
    entries = AuditEntry.objects.filter(action="resume")
    assert entries.count() == 2
    assert {entry.reason for entry in entries} == {"provider back"}
    assert "Resume: 2 runs." in client.get("/").content.decode()


def test_it_cancels_all_runs_matching_the_filter(client, operator):
    waiting = [make_waiting_run(workflow="payment") for _ in range(3)]
    other = make_waiting_run(workflow="arithmetic")
    finished = make_run(Status.SUCCEEDED, workflow="payment")
    data = {"action": "cancel", "scope": "matching", "workflow": "payment", "confirmed": "yes"}
    response = client.post(URL, data)
    assert response["Location"] == "/?workflow=payment"
    assert statuses(*waiting) == [Status.CANCELLED] * 3
    assert statuses(other, finished) == [Status.WAITING, Status.SUCCEEDED]


def test_matching_counts_the_whole_filter(client, operator):
    for _ in range(4):
        make_failed_run()
    make_run(Status.SUCCEEDED)
    html = client.post(URL, {"action": "resume", "scope": "matching", "status": "failed"}).content.decode()
    assert "Resume 4 runs?" in html
    assert "The filter matches 4 runs." in html


def test_it_handles_at_most_the_limit_per_request(client, operator, monkeypatch):
    monkeypatch.setattr(forms, "BULK_LIMIT", 2)
    monkeypatch.setattr("runs.views.bulk_actions.BULK_LIMIT", 2)
    runs = [make_failed_run() for _ in range(3)]
    html = client.post(URL, {"action": "resume", "scope": "matching"}).content.decode()
    assert "Only the oldest 2 are handled in one go" in html
    client.post(URL, {"action": "resume", "scope": "matching", "confirmed": "yes"})
    assert statuses(*runs) == [Status.PENDING, Status.PENDING, Status.FAILED]


def test_nothing_selected_is_a_message(client, operator):
    response = client.post(URL, {"action": "resume", "scope": "selected"}, follow=True)
    assert "Select at least one run" in response.content.decode()


def test_an_unknown_action_is_refused(client, operator):
    run = make_failed_run()
    response = client.post(URL, {"action": "delete", "scope": "selected", "run": [run.pk]}, follow=True)
    assert "Select a valid choice" in response.content.decode()
    assert statuses(run) == [Status.FAILED]


def test_when_nothing_is_eligible_there_is_no_yes_button(client, operator):
    run = make_run(Status.SUCCEEDED)
    html = client.post(URL, {"action": "resume", "scope": "selected", "run": [run.pk]}).content.decode()
    assert "None of them can be resumed" in html
    assert "Yes, resume" not in html


def test_htmx_confirmation_goes_back_to_the_list_in_place(client, operator):
    run = make_failed_run()
    data = {"action": "resume", "scope": "selected", "run": [run.pk], "confirmed": "yes", "status": "failed"}
    response = client.post(URL, data, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert '"path": "/?status=failed"' in response["HX-Location"]
    assert '"target": "#results"' in response["HX-Location"]
