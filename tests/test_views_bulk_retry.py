"""Retry from a step for the runs ticked on the run list: a count first, then one audited
retry per run at that step name's position (through runs.bulk's plan)."""

import pytest
from django.urls import reverse

from runs.models import AuditEntry, Run, Status
from tests.factories import make_operator, make_run, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

URL = reverse("run_bulk")


def failed_pricing(doorbells, count: int) -> list[Run]:
    runs = [Run.objects.start("pricing", {"name": f"i{i}", "price": -i - 1}) for i in range(count)]
    doorbells.drain()
    return runs


def retry(runs, step: str = "check_price", **extra) -> dict:
    ids = [run.pk for run in runs]
    return {"action": "retry", "scope": "selected", "run": ids, "from_step": step, **extra}


def statuses(*runs) -> list[str]:
    return [Run.objects.get(pk=run.pk).status for run in runs]


def test_it_refuses_viewers(client, doorbells):
    runs = failed_pricing(doorbells, 1)
    client.force_login(make_viewer())
    assert client.post(URL, retry(runs, confirmed="yes")).status_code == 403
    assert statuses(*runs) == [Status.FAILED]


def test_it_counts_the_runs_having_that_step_then_retries_each_at_its_position(client, doorbells):
    runs = failed_pricing(doorbells, 2)
    unstarted = make_run(Status.FAILED)  # no step of that name: left alone
    client.force_login(make_operator())

    html = client.post(URL, retry([*runs, unstarted])).content.decode()
    assert "Retry 2 runs from step check_price?" in html
    assert "You selected 3 runs; <strong>2</strong> of them have a step “check_price”" in html
    assert "1 cannot and will be left alone" in html
    assert f'href="/runs/{runs[0].pk}/"' in html and "from step #1" in html  # the sample
    assert not AuditEntry.objects.filter(action="retry").exists()  # a count changes nothing

    response = client.post(URL, retry([*runs, unstarted], confirmed="yes", reason="validator fixed"))
    assert response.status_code == 303
    assert statuses(*runs, unstarted) == [Status.PENDING, Status.PENDING, Status.FAILED]
    entries = AuditEntry.objects.filter(action="retry")
    assert {(entry.run_id, entry.reason, entry.details["from_position"]) for entry in entries} == {
        (runs[0].pk, "validator fixed", 1),
        (runs[1].pk, "validator fixed", 1),
    }
    assert "Retried from step check_price: 2 runs." in client.get("/").content.decode()


def test_the_htmx_count_is_a_panel_fragment(client, doorbells):
    runs = failed_pricing(doorbells, 1)
    client.force_login(make_operator())
    response = client.post(URL, retry(runs), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="bulk-panel")
    html = response.content.decode()
    assert "Retry 1 run from step check_price?" in html
    assert 'name="from_step" value="check_price"' in html  # carried to the confirmation


def test_an_unknown_step_name_is_a_clear_message_and_changes_nothing(client, doorbells):
    runs = failed_pricing(doorbells, 2)
    client.force_login(make_operator())

    html = client.post(URL, retry(runs, step="check_prize")).content.decode()
    assert "None of the 2 selected runs has a step named “check_prize”" in html
    assert "check_price" in html  # the names they do have
    assert "Yes, retry" not in html
    assert 'name="reason"' not in html  # no reason box where nothing can be done

    response = client.post(URL, retry(runs, step="check_prize", confirmed="yes"), follow=True)
    assert "None of the 2 selected runs has a step named “check_prize”; nothing was changed." in (
        response.content.decode()
    )
    assert statuses(*runs) == [Status.FAILED, Status.FAILED]
    assert not AuditEntry.objects.filter(action="retry").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"from_step": ""}, "Type or choose the name of the step to retry from."),
        ({"run": []}, "Select the runs to retry."),
        ({"scope": "matching"}, "use the Recover page"),
    ],
)
def test_an_incomplete_retry_is_explained(client, doorbells, data, message):
    runs = failed_pricing(doorbells, 1)
    client.force_login(make_operator())
    response = client.post(URL, {**retry(runs, confirmed="yes"), **data}, follow=True)
    assert message in response.content.decode()
    assert statuses(*runs) == [Status.FAILED]


def test_step_names_of_the_ticked_runs_fill_the_step_box(client, doorbells):
    runs = failed_pricing(doorbells, 1)
    client.force_login(make_viewer())
    html = client.get(reverse("run_bulk_steps"), {"run": [runs[0].pk]}).content.decode()
    assert '<option value="check_price">' in html
    assert '<option value="read_price">' in html
    assert client.get(reverse("run_bulk_steps")).content.decode().strip() == ""
