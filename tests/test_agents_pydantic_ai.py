"""A Pydantic AI agent run durably: model requests and tool calls are steps, replayed not repeated."""

from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from agentkit import accounting
from agentkit.integrations import agent_thread
from agentkit.models import ProviderCall
from runs.export import export_json
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep
from runs.testing import assert_replays
from steps.models import Attempt, Checkpoint
from tests import pydantic_ai_workflows as pw
from tests.conftest import lapse_leases
from tests.factories import make_operator, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = ["llm:calculator", "tool:add", "llm:calculator", "tool:multiply", "llm:calculator"]


@pytest.fixture(autouse=True)
def _ledger(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("PYDAI_LEDGER", str(tmp_path / "ledger"))
    settings.AGENTS_PRICES = {
        **settings.AGENTS_PRICES,
        "function:arithmetic_model:": {"input": 1.0, "output": 2.0},
    }
    pw.TROUBLE.clear()


def names(run):
    return list(Checkpoint.objects.filter(run=run).order_by("position").values_list("name", flat=True))


def test_it_checkpoints_each_model_request_and_tool_call(doorbells):
    run = Run.objects.start("pydai_calculator", {})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == {"answer": "The answer is 35.", "messages": 6}
    assert names(run) == STEPS
    assert pw.ledger() == ["model:0", "tool:add", "model:1", "tool:multiply", "model:2"]
    tool = Checkpoint.objects.get(run=run, name="tool:multiply")
    assert tool.output == 35
    assert (tool.meta["kind"], tool.meta["arguments"], tool.meta["call_id"]) == (
        "tool",
        {"a": 5, "b": 7},
        "call-mul",
    )


def test_an_exported_run_replays_offline_without_calling_the_model_or_a_tool(doorbells, tmp_path):
    run = Run.objects.start("pydai_calculator", {})
    doorbells.drain()
    export = tmp_path / "run.json"
    export.write_text(export_json(Run.objects.get(pk=run.pk)))
    made = pw.ledger()

    report = assert_replays(export, outcome="clean")

    assert report.output == {"answer": "The answer is 35.", "messages": 6}
    assert pw.ledger() == made  # the replay asked nothing of the model or the tools


def test_a_tool_that_fails_for_good_fails_the_run_at_its_step(doorbells):
    pw.TROUBLE["add"] = 5  # more than its three attempts
    run = Run.objects.start("pydai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    for _ in range(2):
        sweep()
        doorbells.drain()

    run.refresh_from_db()
    assert (run.status, run.error_type, run.error_position) == (Status.FAILED, "ConnectionError", 1)
    assert "add is unreachable" in run.error_message
    assert pw.ledger().count("model:0") == 1


def test_it_records_tokens_cost_and_the_conversation_like_the_built_in_model_steps(doorbells):
    run = Run.objects.start("pydai_calculator", {})
    doorbells.drain()

    calls = ProviderCall.objects.filter(run=run)
    assert sorted(calls.values_list("position", flat=True)) == [0, 2, 4]
    assert set(calls.values_list("outcome", "provider", "workflow")) == {
        ("ok", "function", "pydai_calculator")
    }
    assert all(call.input_tokens > 0 and call.output_tokens > 0 and call.cost_usd > 0 for call in calls)
    last = Checkpoint.objects.get(run=run, position=4)
    shown = accounting.llm_step(last.meta)
    assert (shown["provider"], shown["label"]) == ("function", "calculator")
    assert shown["input_tokens"] == calls.get(position=4).input_tokens
    assert shown["cost_usd"] == pytest.approx(calls.get(position=4).cost_usd)
    roles = [turn["role"] for turn in shown["conversation"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert shown["conversation"][0]["text"] == "Do the sums with your tools."
    assert shown["conversation"][-1]["text"] == "The answer is 35."
    assert accounting.totals_for_runs([run.pk])[run.pk]["calls"] == 3


def test_a_crash_between_tool_calls_resumes_without_asking_the_model_or_calling_a_tool_again(doorbells):
    pw.TROUBLE["multiply-crash"] = 1
    run = Run.objects.start("pydai_calculator", {})
    with pytest.raises(pw.SimulatedCrash):
        doorbells.drain()
    assert names(run) == STEPS[:3]

    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["answer"] == "The answer is 35."
    assert names(run) == STEPS
    # Before the crash: model, add, model, and multiply began; after it, multiply and the answer.
    assert pw.ledger() == ["model:0", "tool:add", "model:1", "tool:multiply", "tool:multiply", "model:2"]
    assert ProviderCall.objects.filter(run=run).count() == 3


def test_it_retries_a_failing_tool_by_its_own_policy(doorbells):
    pw.TROUBLE["add"] = 2
    run = Run.objects.start("pydai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    for _ in range(2):
        sweep()
        doorbells.drain()

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    failed = Attempt.objects.filter(run=run, position=1)
    assert list(failed.values_list("error_type", flat=True)) == ["ConnectionError", "ConnectionError"]
    assert pw.ledger().count("tool:add") == 3
    assert pw.ledger().count("model:0") == 1  # the replays did not ask the model again


def test_a_tool_past_its_timeout_fails_the_attempt_and_is_tried_again(doorbells):
    pw.TROUBLE["multiply"] = 1
    run = Run.objects.start("pydai_calculator", {})
    assert doorbells.drain() == ["ok/retry"]
    attempt = Attempt.objects.get(run=run, position=3)
    assert attempt.error_type == "StepTimeout"

    sweep()
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["answer"] == "The answer is 35."
    assert [line for line in pw.ledger() if line.startswith("model")] == ["model:0", "model:1", "model:2"]


def test_an_agent_that_cannot_stop_is_left_behind_and_the_run_goes_on(doorbells, monkeypatch, caplog):
    # An async tool that blocks its event loop past its timeout: the agent cannot unwind in time.
    monkeypatch.setattr(agent_thread, "ABANDON_AFTER_SECONDS", 0.1)
    pw.TROUBLE["blocking_lookup"] = 1
    run = Run.objects.start("pydai_blocker", {})
    assert doorbells.drain() == ["ok/retry"]
    assert "its thread is abandoned" in caplog.text

    sweep()
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"answer": "found it"}
    assert pw.ledger().count("model:0") == 1


def test_a_tool_that_needs_approval_waits_for_a_signal_shown_in_the_inbox(doorbells):
    run = Run.objects.start("pydai_banker", {})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind, run.wait_signal) == (Status.WAITING, WaitKind.SIGNAL, "approval")
    assert 'asks to call transfer({"cents": 5000})' in run.wait_prompt
    assert pw.ledger() == ["model:0"]

    run.send_signal("approval", {"approved": True}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"answer": "Transfer: sent 5000"}
    assert pw.ledger() == ["model:0", "tool:transfer", "model:1"]
    assert names(run) == ["llm:banker", "signal:approval", "tool:transfer", "llm:banker"]


def test_a_denied_call_is_not_made_and_the_model_is_told(doorbells):
    run = Run.objects.start("pydai_banker", {})
    doorbells.drain()
    run.send_signal("approval", {"approved": False, "note": "wrong account"}, by="alice")
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == {"answer": "Transfer: A person denied this call: wrong account"}
    assert "tool:transfer" not in pw.ledger()


def test_an_approval_nobody_gives_in_time_is_a_denial(doorbells, monkeypatch):
    monkeypatch.setattr(pw.durable_banker, "approval_timeout", timedelta(hours=1))
    run = Run.objects.start("pydai_banker", {})
    doorbells.drain()
    with time_machine.travel(timezone.now() + timedelta(hours=2), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"answer": "Transfer: A person denied this call: nobody approved it in time"}


def test_the_run_page_shows_the_agents_model_requests_as_llm_steps(client, doorbells):
    run = Run.objects.start("pydai_calculator", {})
    doorbells.drain()
    client.force_login(make_viewer())

    response = client.get(reverse("run_detail", args=[run.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('<div class="llm-step">') == 3
    assert "function · function:arithmetic_model:" in html
    assert "· 3 calls</span>" in html


def test_an_operator_approves_the_tool_call_from_the_inbox(client, doorbells):
    run = Run.objects.start("pydai_banker", {})
    doorbells.drain()
    run.refresh_from_db()
    client.force_login(make_operator())
    assert "asks to call transfer" in client.get(reverse("inbox")).content.decode()

    decision = {"decision": "approve", "reason": "checked", "at": run.wait_position, "confirmed": "yes"}
    response = client.post(reverse("inbox_decide", args=[run.pk]), decision, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"answer": "Transfer: sent 5000"}
    assert pw.ledger().count("tool:transfer") == 1


def test_a_rate_limited_model_request_is_retried_and_each_attempt_is_billed(doorbells):
    pw.TROUBLE["statuses"] = [429]
    run = Run.objects.start("pydai_erring", {})
    assert doorbells.drain() == ["ok/retry"]
    sweep()
    assert doorbells.drain() == ["succeeded"]

    assert Run.objects.get(pk=run.pk).output == {"answer": "fine"}
    outcomes = ProviderCall.objects.filter(run=run).values_list("attempt", "outcome")
    assert list(outcomes) == [(1, "ModelHTTPError"), (2, "ok")]


def test_a_refused_model_request_fails_the_run_at_once(doorbells):
    pw.TROUBLE["statuses"] = [401]
    run = Run.objects.start("pydai_erring", {})
    assert doorbells.drain() == ["failed"]

    run.refresh_from_db()
    assert (run.error_type, run.error_position) == ("AuthenticationFailed", 0)
    assert "HTTP 401" in run.error_message
    assert pw.ledger() == ["model"]
