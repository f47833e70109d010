"""Secrets in provider errors are redacted before they are stored: never on the run page,
in the API or in the export."""

import io

import httpx2
import pytest
from django.core.management import call_command

from agentkit import llm
from agentkit.models import ProviderCall
from agentkit.providers import OpenAIProvider
from runs.models import Run, Status
from runs.redaction import redact, redact_value
from runs.workflow import workflow
from steps.models import Attempt, Checkpoint
from tests.factories import make_operator

KEY = "sk-proj-Zq8TtN2hVb7yFr3sKw9mLp4xHc6dJa1e"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"Incorrect API key provided: {KEY}.", "Incorrect API key provided: [redacted]."),
        ("key sk-ant-api03-abcdefgh_ijkl-MNOP here", "key [redacted] here"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: [redacted]"),
        (
            "headers={'authorization': 'Basic dXNlcjpwYXNz', 'x': 1}",
            "headers={'authorization': '[redacted]', 'x': 1}",
        ),
        ('{"Authorization": "token123456"}', '{"Authorization": "[redacted]"}'),
        ("sent bearer eyJhbGciOiJIUzI1NiJ9.e30.abc= to the API", "sent bearer [redacted] to the API"),
        ("x-api-key: sk-ant-123", "x-api-key: [redacted]"),
        ("nothing secret: sk-1, skeleton, bearer", "nothing secret: sk-1, skeleton, bearer"),
    ],
)
def test_it_redacts_keys_tokens_and_headers_by_their_look(text, kept):
    assert redact(text) == kept


def test_it_redacts_the_configured_secrets_wherever_they_appear(settings):
    settings.ANTHROPIC_API_KEY = "plain-anthropic-secret"
    settings.SECRET_KEY = "django-secret-key-value-0123456789"
    settings.DURABLE_METRICS_TOKEN = "metrics-token-42"
    settings.DURABLE_REDACT_VALUES = ["hunter2hunter2", "tiny"]
    text = (
        "a=plain-anthropic-secret b=django-secret-key-value-0123456789 "
        "c=metrics-token-42 d=hunter2hunter2 e=tiny"
    )
    # Values shorter than 8 characters would shred ordinary words: left alone.
    assert redact(text) == "a=[redacted] b=[redacted] c=[redacted] d=[redacted] e=tiny"


def test_it_redacts_every_string_of_a_json_value():
    value = {"messages": [{"content": f"my key is {KEY}"}], KEY: 1, "n": 2}
    assert redact_value(value) == {"messages": [{"content": "my key is [redacted]"}], "[redacted]": 1, "n": 2}


# --- through the engine, the dashboard, the API and the export ---------------------------------


@workflow("redaction_openai")
def openai_workflow(ctx, data):
    return llm.chat(ctx, [llm.user("Hi")], provider="openai", model="gpt-4o-mini")["content"]


def echoing_transport(status: int) -> httpx2.Client:
    """A provider that answers with an error echoing the key it was sent, as some do."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent = request.headers["authorization"]
        message = f"Incorrect API key provided: {sent.removeprefix('Bearer ')}. Header was {sent}."
        return httpx2.Response(status, json={"error": {"message": message, "code": "invalid_api_key"}})

    return httpx2.Client(transport=httpx2.MockTransport(answer))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", [401, 500])  # failed at once; failed after every attempt
def test_a_provider_error_echoing_the_key_never_reaches_a_page_the_api_or_an_export(
    doorbells, settings, client, status
):
    settings.OPENAI_API_KEY = KEY
    settings.AGENTS_LLM_MAX_ATTEMPTS = 1
    provider = OpenAIProvider(api_key=KEY, http_client=echoing_transport(status))
    with llm.override_provider("openai", provider):
        run = Run.objects.start("redaction_openai", {})
        doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert "Incorrect API key provided: [redacted]" in run.error_message

    stored = [
        run.error_message,
        run.error_traceback,
        *Checkpoint.objects.filter(run=run).values_list("error_message", "error_traceback"),
        *Attempt.objects.filter(run=run).values_list("error_message", "error_traceback"),
        *ProviderCall.objects.values_list("model", "outcome"),
    ]
    assert KEY not in repr(stored)
    assert KEY[:20] not in repr(stored)

    client.force_login(make_operator())
    for url in [f"/runs/{run.pk}/", f"/runs/{run.pk}/steps/0/", "/", f"/api/runs/{run.pk}/"]:
        response = client.get(url)
        assert response.status_code == 200
        assert KEY[:20] not in response.content.decode(), url
    export = client.get(f"/api/runs/{run.pk}/export/")
    assert "[redacted]" in export.content.decode()
    assert KEY[:20] not in export.content.decode()
    out = io.StringIO()
    call_command("runs", "export", str(run.pk), stdout=out)
    assert KEY[:20] not in out.getvalue()
