"""An OpenAI Agents SDK agent run durably: model calls and tool calls are steps, replayed not repeated."""

import pytest
from agents import add_trace_processor
from agents.tracing import TracingProcessor

from agentkit.models import ProviderCall
from runs.export import export_json
from runs.models import Run, Status
from runs.recovery import sweep
from runs.testing import assert_replays
from steps.models import Attempt, Checkpoint
from tests import openai_agents_workflows as ow

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = ["llm:calculator", "tool:add", "llm:calculator", "tool:multiply", "llm:calculator"]
CALLS = ["model:0", "tool:add", "model:1", "tool:multiply", "model:2"]


@pytest.fixture(autouse=True)
def _ledger(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("OAI_LEDGER", str(tmp_path / "ledger"))
    settings.AGENTS_PRICES = {**settings.AGENTS_PRICES, "arithmetic-model": {"input": 1.0, "output": 2.0}}
    ow.TROUBLE.clear()


def names(run):
    return list(Checkpoint.objects.filter(run=run).order_by("position").values_list("name", flat=True))


def test_it_checkpoints_each_model_call_and_tool_call(doorbells):
    run = Run.objects.start("oai_calculator", {})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["answer"] == "The answer is 35."
    assert names(run) == STEPS
    assert ow.ledger() == CALLS
    tool = Checkpoint.objects.get(run=run, name="tool:multiply")
    assert tool.output == 35
    assert (tool.meta["kind"], tool.meta["arguments"], tool.meta["call_id"]) == (
        "tool",
        {"a": 5, "b": 7},
        "call-mul",
    )


def test_model_calls_record_tokens_cost_and_the_conversation(doorbells):
    run = Run.objects.start("oai_calculator", {})
    doorbells.drain()

    calls = ProviderCall.objects.filter(run=run).order_by("position")
    assert [(c.position, c.model, c.input_tokens, c.output_tokens) for c in calls] == [
        (0, "arithmetic-model", 100, 10),
        (2, "arithmetic-model", 100, 10),
        (4, "arithmetic-model", 100, 10),
    ]
    assert all(c.cost_usd == pytest.approx(0.00012) for c in calls)
    second = Checkpoint.objects.get(run=run, position=2)
    assert second.meta["kind"] == "llm"
    assert second.meta["response"]["tool_calls"][0]["name"] == "multiply"
    roles = [m["role"] for m in second.meta["request"]["messages"]]
    assert roles[:2] == ["system", "user"] and "tool" in roles


def test_an_exported_run_replays_offline_without_calling_the_model_or_a_tool(doorbells, tmp_path):
    run = Run.objects.start("oai_calculator", {})
    doorbells.drain()
    export = tmp_path / "run.json"
    export.write_text(export_json(Run.objects.get(pk=run.pk)))
    made = ow.ledger()

    report = assert_replays(export, outcome="clean")

    assert report.output["answer"] == "The answer is 35."
    assert ow.ledger() == made  # the replay asked nothing of the model or the tools


def test_a_failing_tool_is_retried_by_its_step_and_the_model_is_not_asked_again(doorbells):
    ow.TROUBLE["add"] = 1
    run = Run.objects.start("oai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    sweep()
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["answer"] == "The answer is 35."
    assert ow.ledger() == ["model:0", "tool:add", "tool:add", *CALLS[2:]]


def test_a_tool_past_its_timeout_fails_the_attempt_and_is_tried_again(doorbells):
    ow.TROUBLE["multiply"] = 1
    run = Run.objects.start("oai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    assert Attempt.objects.get(run=run, position=3).error_type == "StepTimeout"

    sweep()
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["answer"] == "The answer is 35."
    assert [line for line in ow.ledger() if line.startswith("model")] == ["model:0", "model:1", "model:2"]


def test_a_tool_that_fails_for_good_fails_the_run_at_its_step(doorbells):
    ow.TROUBLE["add"] = 5  # more than its three attempts
    run = Run.objects.start("oai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    for _ in range(2):
        sweep()
        doorbells.drain()

    run.refresh_from_db()
    assert (run.status, run.error_type, run.error_position) == (Status.FAILED, "ConnectionError", 1)
    assert ow.ledger() == ["model:0", "tool:add", "tool:add", "tool:add"]


def test_the_sdks_own_tracing_is_off_so_no_trace_is_made_or_sent(doorbells):
    seen = []

    class Recorder(TracingProcessor):
        def on_trace_start(self, trace):
            seen.append(trace)

        def on_trace_end(self, trace):
            seen.append(trace)

        def on_span_start(self, span):
            seen.append(span)

        def on_span_end(self, span):
            seen.append(span)

        def shutdown(self):
            pass

        def force_flush(self):
            pass

    add_trace_processor(Recorder())  # next to the SDK's exporter, which would send to OpenAI
    Run.objects.start("oai_calculator", {})
    assert doorbells.drain() == ["succeeded"]
    assert seen == []


def test_a_run_configs_model_is_the_one_checkpointed(doorbells):
    run = Run.objects.start("oai_run_config_model", {})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == {"answer": "The answer is 35."}
    assert names(run) == ["llm:named", "tool:add", "llm:named", "tool:multiply", "llm:named"]
    assert ow.ledger() == CALLS
