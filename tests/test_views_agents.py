"""The dashboard and the agent toolkit: model figures per step, per run and per workflow, approvals."""

import re

import pytest
from django.core.cache import cache
from django.urls import reverse

from agentkit import demos, fake, llm
from agentkit.models import Payment
from agentkit.templatetags.llm import usd
from runs.models import Run, Status
from runs.views.overview import OVERVIEW_CACHE_KEY
from runs.views.run_page import INLINE_STEPS
from runs.workflow import step, workflow
from tests.factories import make_operator, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}
UNTRUSTED = "<script>window.__xss=1</script>"


@step(name="tool")
def tool(n: int) -> dict:
    return {"n": n}


@workflow("dashboard_llm")
def dashboard_llm(ctx, data):
    for index in range(data.get("tools", 0)):
        ctx.step(tool, index)
    return llm.chat(ctx, [llm.system("Answer briefly."), llm.user(data["question"])], label="ask")["content"]


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 0
    fake.reset()
    cache.delete(OVERVIEW_CACHE_KEY)


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


@pytest.fixture
def operator_client(client):
    client.force_login(make_operator())
    return client


def llm_run(doorbells, tools: int = 0) -> Run:
    run = Run.objects.start("dashboard_llm", {"question": UNTRUSTED, "tools": tools})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    return run


def html_of(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


def test_the_run_page_shows_each_model_calls_figures_and_escaped_conversation(viewer_client, doorbells):
    run = llm_run(doorbells)
    meta = run.checkpoints.get(name="llm:ask").meta

    html = html_of(viewer_client.get(reverse("run_detail", args=[run.pk])))

    assert '<div class="llm-step">' in html
    assert "fake · fake-1" in html
    assert f"{meta['input_tokens']} in / {meta['output_tokens']} out tokens" in html
    assert usd(meta["cost_usd"]) in html
    assert f"{meta['latency_ms']} ms" in html
    assert "conversation: 3 messages" in html
    assert UNTRUSTED not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_the_run_page_totals_the_runs_model_usage(viewer_client, doorbells):
    run = llm_run(doorbells)
    meta = run.checkpoints.get(name="llm:ask").meta
    tokens = meta["input_tokens"] + meta["output_tokens"]

    html = html_of(viewer_client.get(reverse("run_detail", args=[run.pk])))

    assert "<dt>Model usage</dt>" in html
    assert f"{tokens} tok · {usd(meta['cost_usd'])}</span>" in html
    assert "· 1 call</span>" in html


def test_the_list_shows_model_totals_per_run(viewer_client, doorbells):
    run = llm_run(doorbells)
    meta = run.checkpoints.get(name="llm:ask").meta
    tokens = meta["input_tokens"] + meta["output_tokens"]

    html = html_of(viewer_client.get(reverse("run_list")))

    row = html[html.index(f'id="run-{run.pk}"') :]
    row = row[: row.index("</tr>")]
    assert f"{tokens} tok · {usd(meta['cost_usd'])}" in row
    live = viewer_client.get(reverse("run_rows") + f"?ids={run.pk}").content.decode()
    assert f"{tokens} tok · {usd(meta['cost_usd'])}" in live


def test_the_overview_shows_model_cost_per_workflow(viewer_client, doorbells):
    llm_run(doorbells)
    html = html_of(viewer_client.get(reverse("run_overview")))
    assert "Model cost by workflow, 24 h" in html
    table = html[html.index('class="compact llm-costs"') :]
    assert '<td class="mono">dashboard_llm</td>' in table


def test_the_checkpoint_page_shows_the_model_call(viewer_client, doorbells):
    run = llm_run(doorbells)
    checkpoint = run.checkpoints.get(name="llm:ask")
    html = html_of(viewer_client.get(reverse("checkpoint_detail", args=[run.pk, checkpoint.pk])))
    assert "fake · fake-1" in html
    assert "conversation: 3 messages" in html
    assert UNTRUSTED not in html


def test_a_long_runs_model_call_opens_on_demand(viewer_client, doorbells):
    run = llm_run(doorbells, tools=INLINE_STEPS + 1)
    position = run.checkpoints.get(name="llm:ask").position

    page = html_of(viewer_client.get(reverse("run_detail", args=[run.pk])))
    assert '<ol class="steps compact">' in page
    assert '<div class="llm-step">' not in page  # the conversation is not on the page...
    assert "<dt>Model usage</dt>" in page  # ...the run's total is

    url = reverse("run_step", args=[run.pk, position])
    assert f'hx-get="{url}"' in page
    fragment = html_of(viewer_client.get(url, **HTMX))
    assert "fake · fake-1" in fragment
    assert "conversation: 3 messages" in fragment
    assert UNTRUSTED not in fragment


# --- approvals ----------------------------------------------------------------------------


def shortcut(html: str, label: str) -> dict[str, str]:
    """The hidden fields of an action button on the page, as the browser would post them."""
    forms = re.findall(r'<form class="action".*?</form>', html, re.S)  # a form holds its dialog
    form = next(f for f in forms if f">{label}</button>" in f)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
    fields = {name: value.replace("&quot;", '"') for name, value in fields.items()}
    return {**fields, "confirmed": "yes"}


def waiting_approval(doorbells) -> Run:
    demos.ensure_demo_orders()
    run = Run.objects.start(
        "approval_agent", {"order": "A-1003", "reason": "cracked", "deadline_seconds": 60}
    )
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert (run.status, run.wait_signal) == (Status.WAITING, "approval")
    return run


def test_the_approve_shortcut_answers_the_approval_agent(operator_client, doorbells):
    run = waiting_approval(doorbells)
    html = html_of(operator_client.get(reverse("run_detail", args=[run.pk])))

    fields = shortcut(html, "Approve")
    assert fields["name"] == "approval"  # the name the run waits for
    operator_client.post(reverse("run_signal", args=[run.pk]), fields, **HTMX)
    doorbells.drain()

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output["outcome"] == "refunded"
    assert run.output["decision"] == {"approved": True, "note": "approved by otto", "by": "otto"}
    assert Payment.objects.count() == 1


def test_the_reject_shortcut_turns_the_approval_agent_down(operator_client, doorbells):
    run = waiting_approval(doorbells)
    html = html_of(operator_client.get(reverse("run_detail", args=[run.pk])))

    operator_client.post(reverse("run_signal", args=[run.pk]), shortcut(html, "Reject"), **HTMX)
    doorbells.drain()

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output["outcome"] == "rejected"
    assert run.output["decision"]["approved"] is False
    assert not Payment.objects.exists()
