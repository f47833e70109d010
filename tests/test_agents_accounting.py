"""Tokens and cost for the dashboard: per-run totals, cost per workflow, the LLM step template."""

from datetime import timedelta

import pytest
from django.template import Context, Template
from django.utils import timezone

from agentkit import accounting, fake, history, llm
from agentkit.models import ProviderCall
from agentkit.templatetags.llm import usd
from runs.models import Run
from runs.workflow import workflow
from steps.models import Checkpoint

pytestmark = pytest.mark.django_db(transaction=True)


@workflow("agents_test_accounting")
def accounting_workflow(ctx, data):
    return llm.chat(ctx, [llm.system("Be nice."), llm.user(data["question"])], label="ask")["content"]


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    fake.reset()


def make_run(workflow="refund_agent"):
    return Run.objects.create(workflow=workflow, input={})


def call(run, cost, tokens=(100, 20), outcome="ok", age=timedelta(0)):
    return ProviderCall.objects.create(
        run=run,
        position=0,
        provider="fake",
        model="fake-1",
        outcome=outcome,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=cost,
        latency_ms=50,
        created_at=timezone.now() - age,
    )


def render(source, **context):
    return Template("{% load llm %}" + source).render(Context(context))


def test_it_totals_tokens_and_cost_for_a_page_of_runs_in_one_query(django_assert_num_queries):
    first, second, silent = make_run(), make_run("research_agent"), make_run()
    call(first, 0.001)
    call(first, 0.0, tokens=(0, 0), outcome="RateLimited")
    call(second, 0.25, tokens=(1000, 400))

    with django_assert_num_queries(1):
        totals = accounting.totals_for_runs([first.pk, second.pk, silent.pk])

    assert totals[first.pk] == {
        "calls": 2,
        "failed_calls": 1,
        "input_tokens": 100,
        "output_tokens": 20,
        "total_tokens": 120,
        "cost_usd": 0.001,
        "latency_ms": 100,
    }
    assert totals[second.pk]["total_tokens"] == 1400
    assert silent.pk not in totals


def test_it_attaches_totals_to_runs_and_makes_no_query_for_an_empty_page(django_assert_num_queries):
    run, other = make_run(), make_run()
    call(run, 0.5)
    runs = list(Run.objects.filter(pk__in=[run.pk, other.pk]).order_by("pk"))
    with django_assert_num_queries(1):
        accounting.attach_totals(runs)
    assert runs[0].llm_usage["cost_usd"] == 0.5
    assert runs[1].llm_usage is None
    with django_assert_num_queries(0):
        assert accounting.totals_for_runs([]) == {}


def test_it_sums_cost_per_workflow_over_the_last_24_hours(django_assert_num_queries):
    refund_a, refund_b, research = make_run(), make_run(), make_run("research_agent")
    call(refund_a, 0.10)
    call(refund_b, 0.20, age=timedelta(hours=23))
    call(refund_b, 5.00, age=timedelta(hours=25))  # too old
    call(research, 1.00)

    rows = accounting.cost_by_workflow()
    assert [(row["workflow"], row["runs"], row["calls"]) for row in rows] == [
        ("research_agent", 1, 1),
        ("refund_agent", 2, 2),
    ]
    assert rows[1]["cost_usd"] == pytest.approx(0.30)

    # The hours that ended were summed once: from now on they are read, whatever the
    # number of calls, and only the partial hours at both ends of the window are summed.
    call(refund_a, 0.40)
    with django_assert_num_queries(5):
        again = accounting.cost_by_workflow()
    assert [(row["workflow"], row["runs"], row["calls"]) for row in again] == [
        ("research_agent", 1, 1),
        ("refund_agent", 2, 3),
    ]
    assert again[1]["cost_usd"] == pytest.approx(0.70)


def test_it_turns_an_llm_step_into_a_readable_conversation(doorbells):
    run = Run.objects.start("research_agent", {"question": "How do idempotency keys work?"})
    doorbells.drain()
    second_call = Checkpoint.objects.filter(run=run, name="llm:research").order_by("position")[1]

    # The call keeps only its new messages; the rest are read from the first call's checkpoint.
    step = accounting.llm_step(second_call.meta, history.earlier_than(second_call))
    assert (step["messages"], step["earlier_not_shown"], step["earlier_missing"]) == (5, 0, False)
    assert (step["provider"], step["model"], step["label"]) == ("fake", "fake-1", "research")
    assert step["total_tokens"] == step["input_tokens"] + step["output_tokens"] > 0
    assert step["tools"] == ["search_corpus", "read_document", "take_note"]
    turns = step["conversation"]
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_calls"][0]["name"] == "search_corpus"
    assert '"query": "How do idempotency keys work?"' in turns[2]["tool_calls"][0]["arguments"]
    assert turns[3]["tool_name"] == "search_corpus"
    assert '"id": "idempotency-keys"' in turns[3]["text"]  # the JSON result, pretty-printed
    assert turns[-1]["is_reply"] and turns[-1]["tool_calls"][0]["name"] == "read_document"
    assert accounting.llm_step(Checkpoint.objects.get(run=run, position=1).meta) is None


def test_it_renders_tokens_cost_latency_and_an_escaped_conversation(doorbells):
    run = Run.objects.start("agents_test_accounting", {"question": "<script>alert('hi')</script>"})
    doorbells.drain()
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    meta = checkpoint.meta

    html = render("{% llm_step checkpoint %}", checkpoint=checkpoint)

    assert "fake · fake-1" in html
    assert f"{meta['input_tokens']} in / {meta['output_tokens']} out tokens" in html
    assert usd(meta["cost_usd"]) in html
    assert f"{meta['latency_ms']} ms" in html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt;" in html
    assert "conversation: 3 messages, finished: stop" in html


def test_it_shows_the_figures_of_any_step_that_reports_a_model_and_tokens():
    checkpoint = Checkpoint(
        meta={"model": "fake-1", "input_tokens": 1200, "output_tokens": 3, "cost_usd": 0.02}
    )
    html = render("{% llm_step checkpoint %}", checkpoint=checkpoint)
    assert "1,200 in / 3 out tokens" in html
    assert "$0.02" in html
    assert "conversation" not in html


def test_it_renders_nothing_for_a_step_that_is_not_an_llm_call():
    checkpoint = Checkpoint(meta={"kind": "tool", "tool": "x"})
    assert render("{% llm_step checkpoint %}", checkpoint=checkpoint).strip() == ""
    assert render("{% llm_step checkpoint %}", checkpoint=Checkpoint()).strip() == ""


def test_it_renders_run_totals_and_the_cost_table():
    usage = {
        "calls": 3,
        "failed_calls": 1,
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "cost_usd": 0.0042,
        "latency_ms": 900,
    }
    assert "1,500 tok · $0.0042" in render("{% llm_usage usage %}", usage=usage)
    assert render("{% llm_usage usage %}", usage=None).strip() == ""
    rows = [{"workflow": "refund_agent", "runs": 2, **usage}]
    table = render('{% include "agents/cost_by_workflow.html" %}', rows=rows)
    assert "refund_agent" in table
    assert "(1 failed)" in table
    assert "No model calls" in render('{% include "agents/cost_by_workflow.html" %}', rows=[])


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "$0.00"), (0.00042, "$0.0004"), (0.5, "$0.50"), (1234.5, "$1,234.50"), ("x", "-")],
)
def test_it_formats_costs(value, text):
    assert usd(value) == text
