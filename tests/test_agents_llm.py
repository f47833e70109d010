"""LLM steps on the offline fake model: what the checkpoint records, replay, failure modes."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agentkit import fake, llm
from agentkit.models import ProviderCall
from runs.models import Run, Status
from runs.recovery import sweep
from runs.workflow import step, workflow
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)

CRASH = {}


class PowerCut(BaseException):
    """Escapes everything, like the worker process dying."""


@step
def after_the_model(text):
    if CRASH.pop("armed", False):
        raise PowerCut("the worker died after the model answered")
    return text.upper()


@workflow("agents_test_chat")
def chat_workflow(ctx, data):
    reply = llm.chat(ctx, [llm.system("Be brief."), llm.user(data["question"])], label="ask")
    return ctx.step(after_the_model, reply["content"])


@workflow("agents_test_json")
def json_workflow(ctx, data):
    return llm.chat(ctx, [llm.user(data["question"])], json=True)["data"]


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_FAKE_LATENCY = 0
    settings.AGENTS_PRICES = {"fake-1": {"input": 2.0, "output": 10.0}}
    fake.reset()
    CRASH.clear()
    yield
    fake.reset()


def settle(doorbells, rounds=10):
    start = timezone.now()
    doorbells.drain()
    for round in range(1, rounds + 1):
        with time_machine.travel(start + timedelta(minutes=2 * round), tick=False):
            sweep()
            doorbells.drain()


def model_calls(run):
    return ProviderCall.objects.filter(run=run)


def test_it_records_provider_model_request_response_tokens_latency_and_cost(doorbells):
    fake.script([llm.system("Be brief."), llm.user("How are you?")], "Fine, thanks.")
    run = Run.objects.start("agents_test_chat", {"question": "How are you?"})
    assert doorbells.drain() == ["succeeded"]

    checkpoint = Checkpoint.objects.get(run=run, position=0)
    assert checkpoint.name == "llm:ask"
    assert checkpoint.output == {
        "role": "assistant",
        "content": "Fine, thanks.",
        "tool_calls": [],
        "finish_reason": "stop",
    }
    meta = checkpoint.meta
    assert meta["kind"] == "llm"
    assert meta["label"] == "ask"
    assert (meta["provider"], meta["model"]) == ("fake", "fake-1")
    assert meta["request"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How are you?"},
    ]
    assert meta["response"]["content"] == "Fine, thanks."
    assert meta["input_tokens"] > 0
    assert meta["output_tokens"] == fake.approx_tokens("Fine, thanks.[]")
    assert meta["latency_ms"] >= 0
    expected = (meta["input_tokens"] * 2.0 + meta["output_tokens"] * 10.0) / 1_000_000
    assert meta["cost_usd"] == pytest.approx(expected)
    assert Run.objects.get(pk=run.pk).output == "FINE, THANKS."

    call = model_calls(run).get()
    assert (call.position, call.attempt, call.outcome) == (0, 1, "ok")
    assert call.idempotency_key == run.step_idempotency_key(0)
    assert (call.input_tokens, call.output_tokens) == (meta["input_tokens"], meta["output_tokens"])


def test_it_returns_the_recorded_reply_on_replay_without_calling_the_model(doorbells):
    CRASH["armed"] = True
    run = Run.objects.start("agents_test_chat", {"question": "Still there?"})
    with pytest.raises(PowerCut):
        doorbells.drain()
    assert model_calls(run).count() == 1
    # Different answer now: a second call would show up in the output.
    fake.script([llm.system("Be brief."), llm.user("Still there?")], "a different answer")

    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]

    assert model_calls(run).count() == 1
    run.refresh_from_db()
    assert run.output == "(FAKE MODEL) YOU SAID: STILL THERE?"
    assert run.recovery_count == 1


@pytest.mark.parametrize(
    ("mode", "error_type"),
    [("timeout", "ProviderTimeout"), ("rate_limit", "RateLimited"), ("malformed", "MalformedReply")],
)
def test_it_retries_timeouts_rate_limits_and_malformed_replies(doorbells, mode, error_type):
    fake.fail_next(mode, mode)
    run = Run.objects.start("agents_test_chat", {"question": "Hello?"})
    settle(doorbells)

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert [a.error_type for a in Attempt.objects.filter(run=run)] == [error_type, error_type]
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    assert checkpoint.attempts == 3
    assert checkpoint.meta["attempt"] == 3
    assert list(model_calls(run).values_list("outcome", flat=True)) == [error_type, error_type, "ok"]


def test_it_counts_the_tokens_of_a_malformed_reply(doorbells):
    fake.fail_next("malformed")
    run = Run.objects.start("agents_test_json", {"question": "Give me JSON"})
    settle(doorbells)
    failed, ok = model_calls(run)
    assert failed.outcome == "MalformedReply"
    assert failed.output_tokens > 0  # the provider billed it
    assert ok.outcome == "ok"
    assert Run.objects.get(pk=run.pk).output == {"echo": "Give me JSON"}


def test_it_gives_up_after_the_configured_attempts(doorbells, settings):
    settings.AGENTS_LLM_MAX_ATTEMPTS = 2
    fake.fail_next("rate_limit", "rate_limit", "rate_limit")
    run = Run.objects.start("agents_test_chat", {"question": "Hello?"})
    settle(doorbells)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "RateLimited"
    assert Checkpoint.objects.get(run=run, position=0).status == CheckpointStatus.FAILED
    assert model_calls(run).count() == 2


def test_it_fails_at_once_on_an_authentication_error(doorbells):
    class RefusingProvider:
        name = "fake"
        default_model = "fake-1"

        def complete(self, request):
            raise llm.AuthenticationFailed("401: invalid API key")

    with llm.override_provider("fake", RefusingProvider()):
        run = Run.objects.start("agents_test_chat", {"question": "Hello?"})
        assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "AuthenticationFailed"
    assert Attempt.objects.filter(run=run).count() == 1
    assert Checkpoint.objects.get(run=run, position=0).attempts == 1
    assert list(model_calls(run).values_list("outcome", flat=True)) == ["AuthenticationFailed"]


def test_it_fails_a_share_of_model_calls_and_the_retries_get_through(doorbells, settings):
    settings.AGENTS_FAKE_FAILURE_RATE = 0.4
    settings.AGENTS_LLM_MAX_ATTEMPTS = 10
    question = {"question": "When a worker crashes, how are its runs recovered?"}
    runs = [Run.objects.start("research_agent", question) for _ in range(2)]
    for index, run in enumerate(runs):
        # Failures are decided by the steps' idempotency keys: fixed keys, a fixed outcome.
        Run.objects.filter(pk=run.pk).update(idempotency_key=f"fixed-key-{index}")
    settle(doorbells, rounds=40)

    outcomes = []
    for run in runs:
        run.refresh_from_db()
        assert run.status == Status.SUCCEEDED
        outcomes.append(list(model_calls(run).values_list("position", "attempt", "outcome")))
    failures = [outcome for run_outcomes in outcomes for _, _, outcome in run_outcomes if outcome != "ok"]
    assert failures, "a 40% failure rate should fail some of the calls"
    assert set(failures) <= {"ProviderTimeout", "RateLimited", "MalformedReply"}
    # Each model call still got exactly one successful checkpoint.
    ok_positions = [position for position, _, outcome in outcomes[0] if outcome == "ok"]
    assert len(ok_positions) == len(set(ok_positions)) == runs[0].output["model_calls"]

    settings.AGENTS_FAKE_FAILURE_RATE = 1.0
    settings.AGENTS_FAKE_FAILURE_MODES = ["timeout"]
    request = llm.make_request([llm.user("hi")])
    request["model"] = "fake-1"
    with pytest.raises(llm.ProviderTimeout):
        fake.FakeProvider().complete(request)


def test_it_answers_a_scripted_conversation_with_tool_calls():
    conversation = [llm.user("What is the weather?")]
    fake.script(
        conversation, {"content": None, "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}
    )
    reply = llm.complete(llm.make_request(conversation))
    assert reply["tool_calls"] == [{"id": "call_1_0", "name": "weather", "arguments": {"city": "Oslo"}}]
    assert reply["finish_reason"] == "tool_calls"
    assert reply["content"] is None
    # Outside a step the call is still counted, with no run.
    assert ProviderCall.objects.get().run_id is None


def test_it_rejects_messages_without_a_known_role():
    with pytest.raises(ValueError, match="needs a role"):
        llm.make_request([{"role": "wizard", "content": "hi"}])


@pytest.mark.parametrize(
    ("text", "data"),
    [('{"a": 1}', {"a": 1}), ('```json\n{"a": 1}\n```', {"a": 1}), ("[1, 2]", [1, 2])],
)
def test_it_parses_json_replies(text, data):
    assert llm.parse_json_reply(text) == data


def test_it_calls_unparsable_json_malformed():
    with pytest.raises(llm.MalformedReply, match="asked for JSON"):
        llm.parse_json_reply("Sure! Here is your JSON: {")


def test_it_estimates_cost_from_the_price_table(settings):
    settings.AGENTS_PRICES = {"m": {"input": 3.0, "output": 15.0}}
    assert llm.estimate_cost("m", 1_000_000, 100_000) == pytest.approx(4.5)
    assert llm.estimate_cost("unknown", 10, 10) is None
    settings.AGENTS_PRICES = {
        "gpt-4o": {"input": 1.0, "output": 0},
        "gpt-4o-mini": {"input": 2.0, "output": 0},
    }
    assert llm.estimate_cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == 2.0
    assert llm.estimate_cost("gpt-4o-2024-08-06", 1_000_000, 0) == 1.0


def test_it_picks_a_provider_from_the_keys_when_set_to_auto(settings):
    settings.AGENTS_LLM_PROVIDER = "auto"
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = ""
    assert llm.provider_name() == "fake"
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    assert llm.provider_name() == "anthropic"
    settings.OPENAI_API_KEY = "sk-test"
    assert llm.provider_name() == "openai"
    with pytest.raises(llm.BadRequest, match="unknown LLM provider"):
        llm.provider_name("mistral")
