"""The JSON API: tokens, permissions, starting, listing, reading, and every operator action."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import AuditEntry, Run, Status
from steps.models import Checkpoint
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)


def user_with(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name, password="x")
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(content_type__app_label="runs", codename=codename))
    return user


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def nobody():
    return client_for(user_with("nora"))


@pytest.fixture
def viewer():
    return client_for(user_with("vera", "view_run"))


@pytest.fixture
def starter():
    return client_for(user_with("stan", "add_run"))


@pytest.fixture
def operator_user():
    return user_with("olivia", "operate")


@pytest.fixture
def operator(operator_user):
    return client_for(operator_user)


def post(client, url, data=None, **extra):
    return client.post(
        url, json.dumps(data if data is not None else {}), content_type="application/json", **extra
    )


def failed_payment(doorbells) -> Run:
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    exhaust_retries(doorbells, rounds=4)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    return run


def finished(doorbells, workflow="arithmetic", data=None) -> Run:
    run = Run.objects.start(workflow, data if data is not None else {"a": 1, "b": 2})
    doorbells.drain()
    run.refresh_from_db()
    return run


# --- access ------------------------------------------------------------------------------


def test_it_answers_401_without_a_token_or_with_a_wrong_one(doorbells):
    run = finished(doorbells)
    response = APIClient().get("/api/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert wrong.get(f"/api/runs/{run.pk}/").status_code == 401
    assert post(APIClient(), f"/api/runs/{run.pk}/retry/", {"from_step": 0}).status_code == 401
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED


def test_it_answers_403_without_the_permission_before_saying_whether_a_run_exists(nobody, doorbells):
    run = finished(doorbells)
    for url in ["/api/runs/", f"/api/runs/{run.pk}/", "/api/runs/999999/", f"/api/runs/{run.pk}/export/"]:
        response = nobody.get(url)
        assert response.status_code == 403, url
        assert "runs.view_run" in response.json()["detail"]


def test_it_lets_viewers_read_but_not_operate(viewer, doorbells):
    run = failed_payment(doorbells)
    assert viewer.get(f"/api/runs/{run.pk}/").status_code == 200
    response = post(viewer, f"/api/runs/{run.pk}/resume/", {"reason": "try"})
    assert response.status_code == 403
    assert "runs.operate" in response.json()["detail"]
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert not AuditEntry.objects.filter(action="resume").exists()
    assert post(viewer, "/api/runs/", {"workflow": "arithmetic"}).status_code == 403
    assert Run.objects.count() == 1


def test_it_answers_405_for_methods_an_endpoint_does_not_take(operator, doorbells):
    run = finished(doorbells)
    assert operator.get(f"/api/runs/{run.pk}/resume/").status_code == 405
    assert operator.delete(f"/api/runs/{run.pk}/").status_code == 405
    assert post(operator, f"/api/runs/{run.pk}/").status_code == 405
    assert operator.put("/api/runs/", {}, format="json").status_code == 405
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED


def test_it_answers_404_for_an_unknown_run(operator):
    response = operator.get("/api/runs/424242/")
    assert response.status_code == 404
    assert response.json() == {"detail": "No run with id 424242."}
    assert post(operator, "/api/runs/424242/cancel/").status_code == 404
    # Far beyond the id column's range: still a plain 404.
    assert operator.get(f"/api/runs/{10**30}/").status_code == 404


def test_it_lets_a_signed_in_operator_follow_the_export_link_with_a_session(doorbells):
    run = finished(doorbells)
    client = APIClient()
    client.force_login(user_with("dana", "view_run"))
    response = client.get(f"/api/runs/{run.pk}/export/")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}.json"'
    # Session-authenticated writes need the CSRF token, as on the dashboard.
    csrf_client = APIClient(enforce_csrf_checks=True)
    csrf_client.force_login(user_with("dora", "operate"))
    assert post(csrf_client, f"/api/runs/{run.pk}/retry/", {"from_step": 0}).status_code == 403
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED


# --- starting ----------------------------------------------------------------------------


def test_it_starts_a_run_and_returns_the_same_run_for_the_same_idempotency_key(starter, doorbells):
    body = {"workflow": "arithmetic", "input": {"a": 2, "b": 3}, "idempotency_key": "order-17"}
    first = post(starter, "/api/runs/", body)
    assert first.status_code == 201
    run = Run.objects.get()
    assert first["Location"] == f"/api/runs/{run.pk}/"
    assert first.json()["id"] == run.pk
    assert first.json()["idempotency_key"] == "order-17"
    assert first.json()["code_version"] == first.json()["deployed_version"]

    again = post(starter, "/api/runs/", body)
    assert again.status_code == 200
    assert again.json()["id"] == run.pk
    assert Run.objects.count() == 1
    entry = AuditEntry.objects.get(action="start")
    assert (entry.run, entry.actor.username) == (run, "stan")
    assert doorbells.drain() == ["succeeded"]


def test_it_refuses_to_reuse_a_key_for_a_different_input(operator, doorbells):
    post(
        operator, "/api/runs/", {"workflow": "arithmetic", "input": {"a": 1, "b": 1}, "idempotency_key": "k"}
    )
    response = post(
        operator, "/api/runs/", {"workflow": "arithmetic", "input": {"a": 9, "b": 9}, "idempotency_key": "k"}
    )
    assert response.status_code == 409
    assert "already started run" in response.json()["detail"]
    assert Run.objects.count() == 1


def test_it_refuses_an_unknown_workflow_with_the_known_names(operator):
    response = post(operator, "/api/runs/", {"workflow": "nope", "input": {}})
    assert response.status_code == 400
    assert "No workflow named 'nope'" in response.json()["workflow"][0]
    assert "arithmetic" in response.json()["workflow"][0]
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"workflow": "arithmetic", "input": ', "detail"),  # truncated JSON
        ('{"workflow": "arithmetic", "input": NaN}', "detail"),  # not JSON: databases refuse NaN
        ('{"workflow": "arithmetic", "input": 1e999}', "input"),  # overflows to infinity
        ('{"workflow": "arithmetic", "input": {"text": "nul \\u0000 here"}}', "input"),
        ('{"workflow": "arithmetic", "input": {"\\ud800": 1}}', "input"),  # lone surrogate
        ('["arithmetic"]', "non_field_errors"),
        ('{"input": {}}', "workflow"),
        ('{"workflow": "arithmetic", "queue": "../../etc"}', "queue"),
        ('{"workflow": "arithmetic", "idempotency_key": "a\\u0000b"}', "idempotency_key"),
    ],
)
def test_it_refuses_a_bad_start_request_and_starts_nothing(operator, body, field):
    response = operator.post("/api/runs/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Run.objects.count() == 0
    assert not AuditEntry.objects.exists()


def test_it_refuses_a_body_that_is_not_json(operator):
    response = operator.post(
        "/api/runs/", "workflow=arithmetic", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert Run.objects.count() == 0


# --- reading -----------------------------------------------------------------------------


def test_it_lists_runs_newest_first_with_the_dashboard_filters(viewer, doorbells):
    old = Run.objects.start("arithmetic", {"a": 1, "b": 2, "customer": "acme"})
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    doorbells.drain()
    waiting = Run.objects.start("approval", {"customer": "globex"})
    doorbells.drain()
    failed = Run.objects.start("malformed", {})
    doorbells.drain()

    def ids(query=""):
        response = viewer.get(f"/api/runs/{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids() == [failed.pk, waiting.pk, old.pk]
    assert ids("?status=waiting") == [waiting.pk]
    assert ids("?status=&workflow=") == [failed.pk, waiting.pk, old.pk]  # blank filters are ignored
    assert ids("?workflow=arithmetic") == [old.pk]
    assert ids("?q=globex") == [waiting.pk]
    assert ids(f"?q=%23{old.pk}") == [old.pk]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(f"?started_after={since.replace('+', '%2B')}") == [failed.pk, waiting.pk]
    assert ids(f"?started_before={since.replace('+', '%2B')}") == [old.pk]
    row = viewer.get("/api/runs/?status=failed").json()["results"][0]
    assert (row["status"], row["error_type"], row["url"]) == (
        "failed",
        "NonRetryableError",
        f"/api/runs/{failed.pk}/",
    )
    assert "output" not in row  # the list leaves the big columns out


def test_it_pages_by_id_not_by_offset(viewer, doorbells, django_assert_max_num_queries):
    created = [Run.objects.start("arithmetic", {"a": i, "b": 0}).pk for i in range(5)]
    seen, url = [], "/api/runs/?workflow=arithmetic&limit=2"
    while url:
        with django_assert_max_num_queries(4):
            page = viewer.get(url).json()
        seen.append([row["id"] for row in page["results"]])
        url = page["next"]
        if url:
            assert "workflow=arithmetic" in url and "limit=2" in url and "offset" not in url
    assert seen == [created[4:2:-1], created[2:0:-1], created[0:1]]
    # Rows added meanwhile do not shift the older pages.
    newest = Run.objects.start("arithmetic", {"a": 9, "b": 0}).pk
    page = viewer.get(f"/api/runs/?limit=2&before={created[3]}").json()
    assert [row["id"] for row in page["results"]] == [created[2], created[1]]
    assert newest not in [row["id"] for row in page["results"]]


@pytest.mark.parametrize(
    "query",
    ["?status=sleepy", "?limit=0", "?limit=500", "?before=abc", "?started_after=yesterday", "?q=a%00b"],
)
def test_it_refuses_a_malformed_filter(viewer, query):
    response = viewer.get(f"/api/runs/{query}")
    assert response.status_code == 400
    assert response.json()


def test_it_shows_a_run_with_its_steps_attempts_and_signals(viewer, doorbells, django_assert_max_num_queries):
    workflows.PAYMENTS.timeouts_left = 2
    run = Run.objects.start("payment", {"cents": 500})
    exhaust_retries(doorbells, rounds=3)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    with django_assert_max_num_queries(8):
        body = viewer.get(f"/api/runs/{run.pk}/").json()
    assert body["status"] == "succeeded"
    assert body["output"] == {"receipt": {"charged": 500, "key": run.step_idempotency_key(0)}}
    [step] = body["steps"]
    assert (step["name"], step["status"], step["attempts"]) == ("charge", "succeeded", 3)
    assert step["idempotency_key"] == run.step_idempotency_key(0)
    assert [a["number"] for a in step["failed_attempts"]] == [1, 2]
    assert step["failed_attempts"][0]["error_type"] == "TimeoutError"
    assert body["open_attempts"] == []
    assert body["signals"] == []


def test_it_shows_superseded_steps_and_the_attempts_of_a_step_still_retrying(operator, doorbells):
    run = failed_payment(doorbells)
    workflows.PAYMENTS.timeouts_left = 100
    post(operator, f"/api/runs/{run.pk}/resume/")
    doorbells.drain()  # first attempt after the resume fails; the run backs off
    body = operator.get(f"/api/runs/{run.pk}/").json()
    assert body["status"] == "waiting"
    [old] = body["steps"]
    assert old["status"] == "failed" and old["superseded_at"] is not None
    assert [a["number"] for a in old["failed_attempts"]] == [1, 2, 3, 4]
    assert [a["number"] for a in body["open_attempts"]] == [1]


def test_it_lists_the_registered_workflows(viewer):
    rows = {row["name"]: row for row in viewer.get("/api/workflows/").json()}
    assert rows["metered"]["version"] == "2026-11-27.1"
    assert rows["arithmetic"]["version"].startswith("src-")


def test_it_publishes_an_openapi_schema_to_readers_only(viewer):
    anonymous = APIClient().get("/api/schema/?format=json")
    assert anonymous.status_code == 401  # it lists this deployment's workflows
    assert anonymous["WWW-Authenticate"] == "Token"
    stranger = APIClient()
    stranger.force_login(User.objects.create_user("stranger"))
    assert stranger.get("/api/schema/?format=json").status_code == 403
    response = viewer.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert {"/api/runs/", "/api/runs/{run_id}/resume/", "/api/runs/{run_id}/export/"} <= set(schema["paths"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]


# --- operator actions --------------------------------------------------------------------


def test_it_resumes_a_failed_run_and_audits_who_did_it(operator, operator_user, doorbells):
    run = failed_payment(doorbells)
    workflows.PAYMENTS.timeouts_left = 0
    response = post(operator, f"/api/runs/{run.pk}/resume/", {"reason": "provider is back"})
    assert response.status_code == 200
    assert response.json()["detail"] == f"Resumed run {run.pk}."
    assert response.json()["run"]["status"] == "pending"
    entry = AuditEntry.objects.get(run=run, action="resume")
    assert (entry.actor, entry.reason) == (operator_user, "provider is back")
    assert doorbells.drain() == ["succeeded"]


def test_it_refuses_a_wrong_state_action_with_the_models_message(operator, doorbells):
    run = finished(doorbells)
    response = post(operator, f"/api/runs/{run.pk}/resume/", {"reason": "why not"})
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"Cannot resume run {run.pk}: it is succeeded")
    assert post(operator, f"/api/runs/{run.pk}/cancel/").status_code == 409
    assert post(operator, f"/api/runs/{run.pk}/signal/", {"name": "approve"}).status_code == 409
    edit = post(operator, f"/api/runs/{run.pk}/edit/", {"position": 0, "output": 5})
    assert edit.status_code == 409
    retry = post(operator, f"/api/runs/{run.pk}/retry/", {"from_step": 7})
    assert retry.status_code == 409
    assert "its steps are at positions 0 to 2" in retry.json()["detail"]
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED
    assert set(AuditEntry.objects.filter(run=run).values_list("action", flat=True)) == {"start"}


def test_it_retries_from_a_step(operator, doorbells):
    run = finished(doorbells, "counter", {"steps": 4})
    response = post(operator, f"/api/runs/{run.pk}/retry/", {"from_step": 2, "reason": "bad data"})
    assert response.status_code == 200
    assert response.json()["run"]["epoch"] == 1
    assert doorbells.drain() == ["succeeded"]
    assert Checkpoint.objects.filter(run=run, superseded_at__isnull=False).count() == 2
    assert AuditEntry.objects.get(run=run, action="retry").details["from_position"] == 2


def test_it_cancels_signals_and_edits(operator, doorbells):
    waiting = Run.objects.start("approval", {})
    doorbells.drain()
    response = post(
        operator, f"/api/runs/{waiting.pk}/signal/", {"name": "approve", "payload": {"approved": True}}
    )
    assert response.status_code == 200
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=waiting.pk).output["outcome"] == "done"

    other = Run.objects.start("approval", {})
    doorbells.drain()
    response = post(operator, f"/api/runs/{other.pk}/cancel/", {"reason": "wrong customer"})
    assert (response.status_code, response.json()["detail"]) == (200, f"Run {other.pk}: cancelled.")

    failed = failed_payment(doorbells)
    response = post(operator, f"/api/runs/{failed.pk}/edit/", {"position": 0, "output": {"charged": 1}})
    assert response.status_code == 200
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=failed.pk).output == {"receipt": {"charged": 1}}
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"signal", "cancel", "edit", "resume"} <= actions


def test_it_terminates_a_running_run_and_refuses_one_that_is_not(operator, doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    response = post(operator, f"/api/runs/{run.pk}/terminate/", {"reason": "hung"})
    assert response.status_code == 409
    assert "only a running run can be terminated" in response.json()["detail"]
    assert Run.objects.claim(run.pk, "w", "t")
    response = post(operator, f"/api/runs/{run.pk}/terminate/", {"reason": "hung"})
    assert (response.status_code, response.json()["detail"]) == (200, f"Run {run.pk}: terminate requested.")
    assert AuditEntry.objects.filter(run=run, action="terminate", reason="hung").exists()


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("retry", '{"from_step": -1}'),
        ("retry", '{"from_step": "two"}'),
        ("retry", "{}"),
        ("signal", '{"name": ""}'),
        ("signal", '{"name": "approve", "payload": '),
        ("edit", '{"position": 0}'),
        ("edit", '{"position": 0, "output": {"a": "\\u0000"}}'),
        ("resume", '{"reason": 5'),
        ("cancel", '{"reason": "' + "x" * 1001 + '"}'),
    ],
)
def test_it_refuses_a_malformed_action_and_changes_nothing(operator, doorbells, action, body):
    run = failed_payment(doorbells)
    before = AuditEntry.objects.count()
    response = operator.post(f"/api/runs/{run.pk}/{action}/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert Run.objects.get(pk=run.pk).status == Status.FAILED
    assert AuditEntry.objects.count() == before


def test_it_refuses_to_start_a_run_on_a_queue_no_worker_consumes(operator, doorbells):
    response = post(operator, "/api/runs/", {"workflow": "arithmetic", "input": {"a": 1}, "queue": "nowhere"})
    assert response.status_code == 400
    assert "No worker consumes queue 'nowhere'" in response.json()["queue"][0]
    assert not Run.objects.exists()
