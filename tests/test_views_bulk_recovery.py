"""The bulk recovery page: preview by filter with a count and a sample, then act batch by batch."""

import pytest
from django.urls import reverse

from runs import bulk
from runs.models import AuditEntry, Run, Status
from tests import workflows
from tests.factories import make_operator, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

URL = reverse("run_recover")
RETRY = {
    "action": "retry",
    "from_step": "check_price",
    "workflow": "pricing",
    "status": "failed",
    "failed_step": "check_price",
}


def failed_pricing(doorbells, count: int) -> list[Run]:
    runs = [Run.objects.start("pricing", {"name": f"i{i}", "price": -i - 1}) for i in range(count)]
    doorbells.drain()
    return runs


def test_it_refuses_viewers_acting_and_lets_them_preview(client, doorbells):
    failed_pricing(doorbells, 1)
    client.force_login(make_viewer())
    assert client.get(URL, RETRY).status_code == 200
    assert client.post(URL, {**RETRY, "confirmed": "yes"}).status_code == 403
    assert client.put(URL).status_code == 405
    assert not AuditEntry.objects.filter(action="retry").exists()


def test_it_previews_a_count_and_a_sample_then_retries_every_run(client, doorbells):
    runs = failed_pricing(doorbells, 3)
    client.force_login(make_operator())
    html = client.get(URL, RETRY).content.decode()
    assert "Retry 3 runs from check_price…</button>" in html
    assert f'href="/runs/{runs[0].pk}/"' in html
    assert "Retry 3 runs from step check_price?" in html  # the dialog's question

    unconfirmed = client.post(URL, RETRY).content.decode()
    assert 'id="recover-confirm"' in unconfirmed  # without JavaScript the server asks
    assert not AuditEntry.objects.filter(action="retry").exists()

    response = client.post(URL, {**RETRY, "confirmed": "yes", "reason": "validator fixed"})
    assert "Retried: 3 runs; none left." in response.content.decode()
    assert AuditEntry.objects.filter(action="retry", reason="validator fixed").count() == 3
    assert {r.status for r in Run.objects.filter(pk__in=[r.pk for r in runs])} == {Status.PENDING}
    again = client.post(URL, {**RETRY, "confirmed": "yes"}).content.decode()
    assert "Retried: 0 runs; none left." in again  # safe to run twice


def test_large_selections_go_batch_by_batch_with_progress(client, doorbells, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH_SIZE", 2)
    failed_pricing(doorbells, 3)
    client.force_login(make_operator())
    first = client.post(URL, {**RETRY, "confirmed": "yes"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Retried: 2 runs; 1 left." in first
    assert 'hx-trigger="load delay:200ms"' in first
    assert 'name="done_so_far" value="2"' in first
    second = client.post(
        URL, {**RETRY, "confirmed": "yes", "done_so_far": "2"}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "Retried: 3 runs; none left." in second
    assert "hx-trigger" not in second


def test_a_plan_without_a_step_or_filter_is_explained(client, doorbells):
    client.force_login(make_operator())
    html = client.get(URL, {"action": "retry", "status": "failed"}).content.decode()
    assert "Retry from a step needs the step&#x27;s name." in html
    response = client.post(URL, {"action": "retry", "confirmed": "yes"})
    assert response.status_code == 422
    assert "needs the step" in response.content.decode()


def test_the_retrying_filter_lists_attempts_and_next_attempt(client, doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    doorbells.drain()
    client.force_login(make_operator())
    html = client.get(URL, {"action": "retry_now", "status": "retrying"}).content.decode()
    assert f'id="retrying-{run.pk}"' in html
    assert "1 of 4 failed" in html
    assert reverse("run_retry_now", args=[run.pk]) in html


def test_the_preview_warns_when_the_code_changed(client, doorbells):
    runs = failed_pricing(doorbells, 1)
    Run.objects.filter(pk=runs[0].pk).update(code_version="old-build")
    client.force_login(make_operator())
    html = client.get(URL, RETRY).content.decode()
    assert "ran code version old-build" in html
