"""The run list's "retrying" column: attempt n of m and the next attempt for a run in retry
backoff, annotated on the rows' own query, with Retry now beside it."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from runs.models import AuditEntry, Run, Status, WaitKind
from tests import workflows
from tests.factories import make_failed_run, make_operator, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)


def backing_off(doorbells, count: int = 1) -> list[Run]:
    """Runs of "payment" whose charge timed out once: waiting to retry, 1 of 4 attempts failed."""
    workflows.PAYMENTS.timeouts_left = count
    runs = [Run.objects.start("payment", {"cents": 700 + i}) for i in range(count)]
    doorbells.drain()
    assert {(run.status, run.wait_kind) for run in Run.objects.filter(pk__in=[r.pk for r in runs])} == {
        (Status.WAITING, WaitKind.RETRY)
    }
    return runs


def row_of(html: str, run: Run) -> str:
    row = html[html.index(f'id="run-{run.pk}"') :]
    return row[: row.index("</tr>")]


def test_a_run_in_backoff_shows_its_attempts_and_next_attempt(client, doorbells):
    (run,) = backing_off(doorbells)
    failed = make_failed_run()
    client.force_login(make_viewer())
    html = client.get("/").content.decode()
    cell = row_of(html, run)
    assert "attempt 1 of 4 failed," in cell
    assert "next attempt at" in cell and " UTC" in cell
    assert "Retry now" not in cell  # a viewer cannot act
    assert "attempt" not in row_of(html, failed)


def test_operators_get_retry_now_confirmed_in_a_dialog(client, doorbells):
    (run,) = backing_off(doorbells)
    client.force_login(make_operator())
    html = client.get("/").content.decode()
    assert f'form="row-retry-now-{run.pk}" aria-label="retry run {run.pk} now">Retry now…</button>' in html
    form = html[html.index(f'<form id="row-retry-now-{run.pk}"') :]
    form = form[: form.index("</form>")]
    assert f'action="{reverse("run_retry_now", args=[run.pk])}" data-confirm ' in form
    assert "csrfmiddlewaretoken" in form
    assert f'data-question="Retry the step of run #{run.pk} now' in form and 'data-verb="retry now"' in form
    # The dialog itself, with the reason field, comes from the page's one template.
    assert 'name="reason"' in html[html.index('<template id="confirm-dialog-template">') :]


def test_the_live_refresh_shows_the_column_too(client, doorbells):
    (run,) = backing_off(doorbells)
    client.force_login(make_viewer())
    html = client.get(reverse("run_rows")).content.decode()
    assert "attempt 1 of 4 failed," in row_of(html, run)


def test_the_column_costs_no_query_per_row(client, doorbells):
    client.force_login(make_viewer())
    backing_off(doorbells, 1)
    client.get("/")  # warm the session and caches alike

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/").status_code == 200
        return len(captured)

    one = queries()
    backing_off(doorbells, 4)
    assert queries() == one


def test_retry_now_from_the_list_runs_the_step_and_audits(client, doorbells):
    (run,) = backing_off(doorbells)
    client.force_login(make_viewer())
    url = reverse("run_retry_now", args=[run.pk])
    assert client.post(url, {"confirmed": "yes"}).status_code == 403
    client.force_login(make_operator())
    assert "Retry the step of run" in client.post(url).content.decode()  # unconfirmed: asked
    assert Run.objects.get(pk=run.pk).status == Status.WAITING

    response = client.post(url, {"confirmed": "yes", "reason": "provider back"})
    assert response.status_code == 303
    entry = AuditEntry.objects.get(run=run, action="retry now")
    assert entry.reason == "provider back" and entry.actor_name == "otto"
    doorbells.drain()
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED
    html = client.get("/").content.decode()
    assert f"row-retry-now-{run.pk}" not in html


def test_the_list_filters_the_runs_in_backoff(client, doorbells):
    (run,) = backing_off(doorbells)
    failed = make_failed_run()
    client.force_login(make_viewer())
    html = client.get("/?status=retrying").content.decode()
    assert f'id="run-{run.pk}"' in html
    assert f'id="run-{failed.pk}"' not in html
    assert "retrying (in backoff)" in html  # offered in the status filter
