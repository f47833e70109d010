"""The API's recovery surfaces: edit and continue, retry now, bulk by filter, code warnings."""

import pytest

from runs.models import AuditEntry, Run, Status
from tests import workflows
from tests.test_api import client_for, post, user_with

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return client_for(user_with("olivia", "operate"))


@pytest.fixture
def viewer():
    return client_for(user_with("vera", "view_run"))


def failed_pricing(doorbells, count=1) -> list[Run]:
    runs = [Run.objects.start("pricing", {"name": f"i{i}", "price": -1}) for i in range(count)]
    doorbells.drain()
    return runs


def test_it_needs_the_operate_permission(viewer, doorbells):
    run = failed_pricing(doorbells)[0]
    for url, body in [
        (f"/api/runs/{run.pk}/edit-and-continue/", {"position": 0, "output": 1}),
        (f"/api/runs/{run.pk}/retry-now/", {}),
        ("/api/runs/bulk/", {"action": "resume", "status": "failed"}),
    ]:
        assert post(viewer, url, body).status_code == 403
    assert not AuditEntry.objects.exclude(action="start").exists()


def test_it_edits_and_continues(operator, doorbells):
    run = failed_pricing(doorbells)[0]
    response = post(
        operator,
        f"/api/runs/{run.pk}/edit-and-continue/",
        {"position": 0, "output": {"item": "x", "price": 9}},
    )
    assert response.status_code == 200
    assert response.json()["warnings"] == []
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"invoiced": 9}
    bad = post(operator, f"/api/runs/{run.pk}/edit-and-continue/", {"position": 0, "output": 1})
    assert bad.status_code == 200  # a succeeded run may be edited and continued too
    assert post(operator, f"/api/runs/{run.pk}/edit-and-continue/", {"position": 0}).status_code == 400


def test_retry_now_and_its_wrong_state(operator, doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    doorbells.drain()
    workflows.PAYMENTS.timeouts_left = 0
    assert post(operator, f"/api/runs/{run.pk}/retry-now/", {"reason": "back"}).status_code == 200
    assert doorbells.drain() == ["succeeded"]
    response = post(operator, f"/api/runs/{run.pk}/retry-now/", {})
    assert response.status_code == 409
    assert "only a run backing off" in response.json()["detail"]


def test_a_resume_under_other_code_says_so_and_the_run_records_it(operator, doorbells):
    run = failed_pricing(doorbells)[0]
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    detail = operator.get(f"/api/runs/{run.pk}/").json()
    assert "old-build" in detail["code_warning"]
    response = post(operator, f"/api/runs/{run.pk}/resume/", {})
    assert "The code changed" in response.json()["warnings"][0]
    assert response.json()["run"]["code_version"] == response.json()["run"]["deployed_version"]
    assert operator.get(f"/api/runs/{run.pk}/").json()["code_versions"][0] == "old-build"


def test_bulk_retry_by_failing_step_dry_run_first(operator, doorbells):
    runs = failed_pricing(doorbells, 3)
    body = {
        "action": "retry",
        "from_step": "check_price",
        "workflow": "pricing",
        "failed_step": "check_price",
        "status": "failed",
    }
    dry = post(operator, "/api/runs/bulk/", {**body, "dry_run": True}).json()
    assert (dry["eligible"], dry["done"], len(dry["sample"])) == (3, [], 3)
    assert dry["sample"][0]["position"] == 1
    assert not AuditEntry.objects.filter(action="retry").exists()
    done = post(operator, "/api/runs/bulk/", {**body, "reason": "fixed"}).json()
    assert (sorted(done["done"]), done["remaining"]) == (sorted(r.pk for r in runs), 0)
    assert post(operator, "/api/runs/bulk/", body).json()["done"] == []
    assert AuditEntry.objects.filter(action="retry", reason="fixed").count() == 3
    assert {r.status for r in Run.objects.filter(workflow="pricing")} == {Status.PENDING}


def test_bulk_refuses_a_retry_without_its_step_and_strict_json(operator, doorbells):
    failed_pricing(doorbells)
    response = post(operator, "/api/runs/bulk/", {"action": "retry", "status": "failed"})
    assert response.status_code == 409
    assert "step's name" in json_text(response)
    assert post(operator, "/api/runs/bulk/", {"action": "resume", "dry_run": 0}).status_code == 400
    assert post(operator, "/api/runs/bulk/", {"action": "resume", "ids": ["1"]}).status_code == 400
    everything = post(operator, "/api/runs/bulk/", {"action": "resume", "dry_run": True}).json()
    assert (everything["selected"], everything["eligible"]) == (1, 1)  # no filter: every run, counted


def json_text(response) -> str:
    return response.content.decode()


def test_the_list_filters_runs_in_retry_backoff(operator, doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    backing_off = Run.objects.start("payment", {"cents": 700})
    failed_pricing(doorbells)
    ids = [row["id"] for row in operator.get("/api/runs/?status=retrying").json()["results"]]
    assert ids == [backing_off.pk]
