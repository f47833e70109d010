"""The OpenAI and Anthropic SDK providers against a mocked HTTP transport (never the network)."""

import json

import httpx2
import pytest

from agentkit import llm
from agentkit.models import ProviderCall
from agentkit.providers import AnthropicProvider, OpenAIProvider
from runs.models import Run, Status
from runs.recovery import sweep
from runs.workflow import workflow
from steps.models import Attempt, Checkpoint

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "name": "weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CONVERSATION = [
    llm.system("You are terse."),
    llm.user("Weather in Oslo?"),
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "name": "weather", "arguments": {"city": "Oslo"}}],
    },
    llm.tool_result("call_1", "weather", {"celsius": -3}),
]


class Transport:
    """Answers each request with the next queued response and keeps what was sent."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self))

    def sent(self, index=-1) -> dict:
        return json.loads(self.requests[index].content)


def openai_completion(content=None, tool_calls=None, prompt_tokens=120, completion_tokens=17):
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def anthropic_message(content, stop_reason="end_turn", input_tokens=95, output_tokens=12):
    return {
        "id": "msg_123",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def openai(transport):
    return OpenAIProvider(api_key="sk-test", http_client=transport.client())


def anthropic(transport):
    return AnthropicProvider(api_key="sk-ant-test", http_client=transport.client())


def request(**options):
    req = llm.make_request(CONVERSATION, tools=[WEATHER], **options)
    req["model"] = options.get("model") or "gpt-4o-mini"
    return req


# --- OpenAI -----------------------------------------------------------------------------


def test_it_sends_openai_chat_messages_tools_and_maps_the_reply_and_usage():
    transport = Transport(httpx2.Response(200, json=openai_completion(content="Cold: -3°C.")))
    reply = openai(transport).complete(request(temperature=0.2))

    sent = transport.sent()
    assert transport.requests[0].url.path.endswith("/chat/completions")
    assert transport.requests[0].headers["authorization"] == "Bearer sk-test"
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.2
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["messages"][2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": -3}'}
    assert sent["tools"] == [{"type": "function", "function": WEATHER}]
    assert (reply.content, reply.input_tokens, reply.output_tokens) == ("Cold: -3°C.", 120, 17)
    assert (reply.model, reply.response_id, reply.finish_reason) == (
        "gpt-4o-mini-2024-07-18",
        "chatcmpl-123",
        "stop",
    )


def test_it_maps_openai_tool_calls():
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Bergen"}'},
    }
    transport = Transport(httpx2.Response(200, json=openai_completion(tool_calls=[call])))
    reply = llm.normalise(openai(transport).complete(request()), json_mode=False)
    assert reply["tool_calls"] == [{"id": "call_9", "name": "weather", "arguments": {"city": "Bergen"}}]
    assert reply["finish_reason"] == "tool_calls"


def test_it_asks_openai_for_a_json_object_in_json_mode():
    transport = Transport(httpx2.Response(200, json=openai_completion(content='{"ok": true}')))
    provider = openai(transport)
    req = llm.make_request([llm.user("JSON please")], json=True)
    req["model"] = "gpt-4o-mini"
    assert llm.normalise(provider.complete(req), json_mode=True)["data"] == {"ok": True}
    assert transport.sent()["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}},
            llm.AuthenticationFailed,
        ),
        (403, {"error": {"message": "Forbidden"}}, llm.AuthenticationFailed),
        (429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}, llm.RateLimited),
        (
            429,
            {"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}},
            llm.BadRequest,
        ),
        (400, {"error": {"message": "Invalid messages"}}, llm.BadRequest),
        (404, {"error": {"message": "No such model"}}, llm.BadRequest),
        (500, {"error": {"message": "Server error"}}, llm.ProviderUnavailable),
        (503, {"error": {"message": "Overloaded"}}, llm.ProviderUnavailable),
    ],
)
def test_it_maps_openai_errors(status, body, error):
    transport = Transport(httpx2.Response(status, json=body, headers={"retry-after": "7"}))
    with pytest.raises(error) as raised:
        openai(transport).complete(request())
    assert len(transport.requests) == 1  # the SDK does not retry: the engine does
    if error is llm.RateLimited:
        assert raised.value.retry_after == 7.0


def test_it_maps_an_openai_timeout_and_a_lost_connection():
    timeout = Transport(httpx2.ReadTimeout("read timed out"))
    with pytest.raises(llm.ProviderTimeout):
        openai(timeout).complete(request())
    refused = Transport(httpx2.ConnectError("connection refused"))
    with pytest.raises(llm.ProviderUnavailable):
        openai(refused).complete(request())


def test_only_authentication_and_bad_request_errors_are_non_retryable():
    policy = llm.retry_policy()
    assert not policy.is_retryable(llm.AuthenticationFailed("x"))
    assert not policy.is_retryable(llm.BadRequest("x"))
    for retryable in (llm.RateLimited("x"), llm.ProviderTimeout("x"), llm.ProviderUnavailable("x")):
        assert policy.is_retryable(retryable)
    assert policy.is_retryable(llm.MalformedReply("x"))


# --- Anthropic --------------------------------------------------------------------------


def test_it_sends_anthropic_messages_with_system_tools_and_tool_results():
    transport = Transport(httpx2.Response(200, json=anthropic_message([{"type": "text", "text": "Cold."}])))
    reply = anthropic(transport).complete(request(model="claude-haiku-4-5", max_tokens=300))

    sent = transport.sent()
    assert transport.requests[0].url.path.endswith("/v1/messages")
    assert "sk-ant-test" in transport.requests[0].headers.get(
        "x-api-key", transport.requests[0].headers.get("authorization")
    )
    assert sent["system"] == "You are terse."
    assert sent["max_tokens"] == 300
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": '{"celsius": -3}'}],
        },
    ]
    assert sent["tools"] == [
        {"name": "weather", "description": "Current weather in a city", "input_schema": WEATHER["parameters"]}
    ]
    assert (reply.content, reply.input_tokens, reply.output_tokens) == ("Cold.", 95, 12)
    assert (reply.model, reply.response_id, reply.finish_reason) == (
        "claude-3-5-haiku-20241022",
        "msg_123",
        "end_turn",
    )


def test_it_maps_anthropic_tool_use_blocks():
    content = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Tromsø"}},
    ]
    transport = Transport(httpx2.Response(200, json=anthropic_message(content, stop_reason="tool_use")))
    reply = llm.normalise(anthropic(transport).complete(request()), json_mode=False)
    assert reply["content"] == "Let me check."
    assert reply["tool_calls"] == [{"id": "toolu_1", "name": "weather", "arguments": {"city": "Tromsø"}}]
    assert reply["finish_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (401, "authentication_error", llm.AuthenticationFailed),
        (403, "permission_error", llm.AuthenticationFailed),
        (429, "rate_limit_error", llm.RateLimited),
        (400, "invalid_request_error", llm.BadRequest),
        (500, "api_error", llm.ProviderUnavailable),
        (529, "overloaded_error", llm.ProviderUnavailable),
    ],
)
def test_it_maps_anthropic_errors(status, kind, error):
    body = {"type": "error", "error": {"type": kind, "message": "nope"}}
    transport = Transport(httpx2.Response(status, json=body))
    with pytest.raises(error):
        anthropic(transport).complete(request())
    assert len(transport.requests) == 1


def test_it_maps_an_anthropic_timeout():
    with pytest.raises(llm.ProviderTimeout):
        anthropic(Transport(httpx2.ReadTimeout("read timed out"))).complete(request())


# --- through the engine -------------------------------------------------------------------


@workflow("agents_test_openai")
def openai_workflow(ctx, data):
    return llm.chat(ctx, [llm.user(data["question"])], provider="openai", model="gpt-4o-mini")["content"]


def test_it_retries_an_openai_rate_limit_and_records_usage_and_cost(doorbells, settings):
    settings.AGENTS_PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}}
    transport = Transport(
        httpx2.Response(429, json={"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
        httpx2.Response(
            200, json=openai_completion(content="Hello!", prompt_tokens=1000, completion_tokens=500)
        ),
    )
    with llm.override_provider("openai", openai(transport)):
        run = Run.objects.start("agents_test_openai", {"question": "Hi"})
        assert doorbells.drain() == ["ok/retry"]  # backing off after the 429
        Run.objects.filter(pk=run.pk).update(wake_at=run.created_at)  # the backoff has passed
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == "Hello!"
    assert [a.error_type for a in Attempt.objects.filter(run=run)] == ["RateLimited"]
    meta = Checkpoint.objects.get(run=run, position=0).meta
    # The model the provider reports (a dated snapshot) is recorded, priced as gpt-4o-mini.
    assert (meta["provider"], meta["model"]) == ("openai", "gpt-4o-mini-2024-07-18")
    assert (meta["input_tokens"], meta["output_tokens"]) == (1000, 500)
    assert meta["cost_usd"] == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1_000_000)
    assert list(ProviderCall.objects.filter(run=run).values_list("outcome", "provider")) == [
        ("RateLimited", "openai"),
        ("ok", "openai"),
    ]


def test_it_fails_a_run_at_once_when_openai_refuses_the_key(doorbells):
    transport = Transport(httpx2.Response(401, json={"error": {"message": "Incorrect API key provided"}}))
    with llm.override_provider("openai", openai(transport)):
        run = Run.objects.start("agents_test_openai", {"question": "Hi"})
        assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "AuthenticationFailed"
    assert "Incorrect API key" in run.error_message
    assert Attempt.objects.filter(run=run).count() == 1
    assert len(transport.requests) == 1
