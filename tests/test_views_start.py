"""Starting a run from the dashboard: operators only, input through jsoninput and the
workflow's schema, idempotency key and queue, audited."""

import pytest
from django.urls import reverse

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import AuditEntry, Run
from runs.workflow import workflow
from tests.factories import make_operator, make_viewer

pytestmark = pytest.mark.django_db


@workflow("greeting_with_schema")
def greeting_with_schema(ctx, data):
    return {"hello": data["name"]}


greeting_with_schema.input_schema = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "times": {"type": "integer"}},
    "required": ["name"],
}


@pytest.fixture
def operator_client(client, doorbells):
    client.force_login(make_operator())
    return client


def test_it_offers_the_registered_workflows_and_the_queues(operator_client, settings):
    settings.DURABLE_QUEUES = ["durable", "bulk"]
    html = operator_client.get(reverse("start_run")).content.decode()
    assert '<option value="greeting_with_schema">' in html and '<option value="approval">' in html
    assert '<option value="bulk">' in html
    assert "minLength" in html  # the declared schema is shown


def test_it_starts_a_run_audited_and_lands_on_its_page(
    operator_client, doorbells, django_capture_on_commit_callbacks
):
    data = {"workflow": "greeting_with_schema", "input": '{"name": "李雷"}', "idempotency_key": ""}
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(reverse("start_run"), data)
    run = Run.objects.get()
    assert response.status_code == 303 and response["Location"] == reverse("run_detail", args=[run.pk])
    assert run.input == {"name": "李雷"} and run.workflow == "greeting_with_schema"
    assert doorbells.rung == [run.pk]
    entry = AuditEntry.objects.get(run=run, action="start")
    assert entry.actor_name == "otto"


def test_the_same_idempotency_key_opens_the_same_run(operator_client):
    data = {"workflow": "approval", "input": "{}", "idempotency_key": "order-7"}
    first = operator_client.post(reverse("start_run"), data)
    second = operator_client.post(reverse("start_run"), data)
    assert Run.objects.count() == 1
    assert first["Location"] == second["Location"]
    shown = [str(m) for m in operator_client.get(second["Location"]).context["messages"]]
    assert any("nothing new was started" in m for m in shown), shown


def test_input_against_the_schema_is_refused_with_each_problem_and_kept(operator_client):
    data = {"workflow": "greeting_with_schema", "input": '{"times": "twice"}'}
    response = operator_client.post(reverse("start_run"), data)
    assert response.status_code == 422
    html = response.content.decode()
    assert "the input: &#x27;name&#x27; is a required property" in html
    assert "times: &#x27;twice&#x27; is not of type &#x27;integer&#x27;" in html
    assert "{&quot;times&quot;: &quot;twice&quot;}</textarea>" in html
    assert not Run.objects.exists()


def test_invalid_json_and_over_deep_input_are_refused_by_jsoninput(operator_client):
    bad = operator_client.post(reverse("start_run"), {"workflow": "approval", "input": "{oops"})
    assert bad.status_code == 422 and "not valid JSON" in bad.content.decode()
    deep = "[" * 5000 + "]" * 5000
    too_deep = operator_client.post(reverse("start_run"), {"workflow": "approval", "input": deep})
    assert too_deep.status_code == 422
    assert not Run.objects.exists()


def test_an_unknown_workflow_or_queue_is_refused(operator_client):
    response = operator_client.post(reverse("start_run"), {"workflow": "nope", "input": "{}"})
    assert (
        response.status_code == 422
        and "nope is not one of the available choices" in response.content.decode()
    )
    response = operator_client.post(
        reverse("start_run"), {"workflow": "approval", "input": "{}", "queue": "x"}
    )
    assert response.status_code == 422
    assert not Run.objects.exists()


def test_viewers_may_not_start_runs(client):
    client.force_login(make_viewer())
    assert client.get(reverse("start_run")).status_code == 403
    assert client.post(reverse("start_run"), {"workflow": "approval", "input": "{}"}).status_code == 403
    assert not Run.objects.exists()


def test_it_needs_get_or_post(operator_client):
    assert operator_client.put(reverse("start_run")).status_code == 405
