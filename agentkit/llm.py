"""LLM calls as checkpointed steps.

    from agentkit import llm

    @workflow("triage")
    def triage(ctx, data):
        reply = llm.chat(ctx, [llm.system("Classify the ticket."), llm.user(data["ticket"])], json=True)
        return reply["data"]

`llm.chat` runs one model call as its own step (`llm` or `llm:<label>`). The step
records on its checkpoint's `meta` the provider, model, request, response, input
and output tokens, latency and estimated cost; a replayed run gets the recorded
reply back without calling the model. A call that extends a conversation this run
sent before records only the new messages and a reference to that call, on its
input and its meta alike (agentkit.history), so an agent loop stores O(n) bytes.
Rate limits, timeouts, unavailable servers and malformed replies are retried with
backoff; authentication and bad-request errors fail the step at once.

Messages are provider-neutral dicts, translated for each SDK by agentkit.providers:

    {"role": "system" | "user", "content": str}
    {"role": "assistant", "content": str | None, "tool_calls": [{"id", "name", "arguments": {...}}]}
    {"role": "tool", "tool_call_id": str, "name": str, "content": str}
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from django.conf import settings
from django.db import DatabaseError

from agentkit import faults, history
from runs import jsoninput, tracing
from runs.redaction import redact, redact_value
from runs.workflow import NonRetryableError, RetryPolicy, current_step, step

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
# Longest message text kept in a checkpoint's meta; the reply itself is never cut.
META_TEXT_LIMIT = 20_000


# --- errors ------------------------------------------------------------------------


class LLMError(Exception):
    """A model call failed. Subclasses say whether trying again can help."""


class RateLimited(LLMError):
    """The provider asked us to slow down (HTTP 429). Retried."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ProviderTimeout(LLMError):
    """The provider did not answer in time. Retried."""


class ProviderUnavailable(LLMError):
    """Connection failed, or the provider is overloaded or broken (5xx). Retried."""


class MalformedReply(LLMError):
    """The reply could not be used: empty, unparsable JSON, broken tool arguments. Retried."""


class AuthenticationFailed(LLMError, NonRetryableError):
    """The API key was refused (401/403). Trying again cannot help."""


class BadRequest(LLMError, NonRetryableError):
    """The provider refused the request itself (400, 404, 422, quota). Not retried."""


# --- requests, replies, providers --------------------------------------------------


class ToolSpec(TypedDict):
    name: str
    description: str
    parameters: dict


class LLMRequest(TypedDict, total=False):
    provider: str
    model: str
    messages: list[dict]
    # Set when `messages` are only the new ones: the conversation so far is the one the
    # call at this position was sent (agentkit.history); providers get it whole.
    history: history.Reference
    tools: list[ToolSpec]
    json: bool
    temperature: float | None
    max_tokens: int


@dataclass
class ProviderReply:
    """What a provider answered, before normalisation. Tool arguments may still be JSON text."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    response_id: str = ""


class Provider(Protocol):
    name: str

    @property
    def default_model(self) -> str: ...

    def complete(self, request: LLMRequest) -> ProviderReply: ...


def _fake() -> Provider:
    from agentkit.fake import FakeProvider

    return FakeProvider()


def _openai() -> Provider:
    from agentkit.providers import OpenAIProvider

    return OpenAIProvider(api_key=settings.OPENAI_API_KEY)


def _anthropic() -> Provider:
    from agentkit.providers import AnthropicProvider

    return AnthropicProvider(api_key=settings.ANTHROPIC_API_KEY)


PROVIDER_FACTORIES: dict[str, Callable[[], Provider]] = {
    "fake": _fake,
    "openai": _openai,
    "anthropic": _anthropic,
}
# One instance per provider and process: SDK clients keep their connections open.
_instances: dict[str, Provider] = {}


def provider_name(requested: str | None = None) -> str:
    name = requested or settings.AGENTS_LLM_PROVIDER
    if name == "auto":
        if settings.OPENAI_API_KEY:
            return "openai"
        if settings.ANTHROPIC_API_KEY:
            return "anthropic"
        return "fake"
    if name not in PROVIDER_FACTORIES:
        raise BadRequest(f"unknown LLM provider {name!r} (known: {', '.join(sorted(PROVIDER_FACTORIES))})")
    return name


def get_provider(requested: str | None = None) -> Provider:
    name = provider_name(requested)
    if name not in _instances:
        _instances[name] = PROVIDER_FACTORIES[name]()
    return _instances[name]


@contextmanager
def override_provider(name: str, provider: Provider) -> Iterator[Provider]:
    """Use `provider` for calls to `name` inside the block (tests: a mocked SDK transport)."""
    previous = _instances.get(name)
    _instances[name] = provider
    try:
        yield provider
    finally:
        if previous is None:
            _instances.pop(name, None)
        else:
            _instances[name] = previous


# --- building requests (in workflow code) -------------------------------------------


def system(content: str) -> dict:
    return {"role": "system", "content": content}


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def tool_result(call_id: str, name: str, result: Any) -> dict:
    content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


def assistant_message(reply: dict) -> dict:
    """The message to append to the conversation for a reply returned by `chat`."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if reply.get("tool_calls"):
        message["tool_calls"] = reply["tool_calls"]
    return message


def make_request(
    messages: Sequence[dict],
    *,
    tools: Sequence[ToolSpec] = (),
    model: str | None = None,
    json: bool = False,
    temperature: float | None = None,
    max_tokens: int | None = None,
    provider: str | None = None,
) -> LLMRequest:
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"message {index} needs a role among {', '.join(ROLES)}: {message!r}")
    request: LLMRequest = {
        "messages": [dict(message) for message in messages],
        "tools": list(tools),
        "json": json,
        "temperature": temperature,
        "max_tokens": max_tokens or settings.AGENTS_LLM_MAX_TOKENS,
    }
    if model:
        request["model"] = model
    if provider:
        request["provider"] = provider
    return request


def retry_policy() -> RetryPolicy:
    """Rate limits, timeouts and malformed output: back off and try again."""
    return RetryPolicy(
        max_attempts=settings.AGENTS_LLM_MAX_ATTEMPTS,
        initial_interval=2.0,
        backoff_coefficient=2.0,
        max_interval=60.0,
    )


def llm_step(label: str = "", conversation: Sequence[dict] | None = None) -> Callable[[LLMRequest], dict]:
    """A step function that makes one model call; name `llm` or `llm:<label>`.

    With `conversation`, the step is called with a request holding only the messages new
    since its `history` reference (what its checkpoint keeps) and sends the whole
    `conversation` to the model.
    """

    def call_model(request: LLMRequest) -> dict:
        faults.inject()
        if conversation is not None:
            request = {**request, "messages": list(conversation)}
        return complete(request)

    def whole(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # Calls recorded before agentkit.history kept the whole conversation as their input.
        if conversation is None or not args or not isinstance(args[0], dict):
            return args, kwargs
        request = {key: value for key, value in args[0].items() if key != "history"}
        return ({**request, "messages": list(conversation)}, *args[1:]), kwargs

    return step(
        call_model,
        name=f"llm:{label}" if label else "llm",
        retry=retry_policy(),
        timeout=settings.AGENTS_LLM_TIMEOUT + 5,
        former_call=whole,
    )


def chat(ctx, messages: Sequence[dict], *, label: str = "", **options) -> dict:
    """Ask the model, as one checkpointed step, and return its reply.

    The reply is `{"role": "assistant", "content", "tool_calls", "finish_reason"}`, plus
    `"data"` (the parsed JSON) when `json=True`. Options: tools (specs, see
    agentkit.tools.specs), model, json, temperature, max_tokens, provider.
    """
    request = make_request(messages, **options)
    position = ctx.position
    reference, new = history.continuation(ctx, request["messages"])
    if reference is None:
        reply = ctx.step(llm_step(label), request)
    else:
        reply = ctx.step(
            llm_step(label, request["messages"]), {**request, "history": reference, "messages": new}
        )
    history.remember(ctx, position, request["messages"])
    return reply


# --- the step body ------------------------------------------------------------------


def complete(request: LLMRequest) -> dict:
    """Make one model call, record what it cost, and return the normalised reply.

    Inside a step (`llm.chat`, or your own `@step`), the call's facts go onto the
    step's checkpoint meta.
    """
    provider = get_provider(request.get("provider"))
    model = request.get("model") or provider.default_model
    request = {**request, "model": model}
    started = time.monotonic()
    reply: ProviderReply | None = None
    outcome = "ok"
    with tracing.span(f"chat {model}", _request_attributes(provider.name, request), client=True) as span:
        try:
            reply = provider.complete(request)
            result = normalise(reply, json_mode=bool(request.get("json")))
        except BaseException as exc:
            outcome = type(exc).__name__
            span.set_attributes({"error.type": outcome})
            raise
        finally:
            latency_ms = int((time.monotonic() - started) * 1000)
            usage = (reply.input_tokens, reply.output_tokens) if reply else (0, 0)
            record_call(provider.name, (reply and reply.model) or model, outcome, usage, latency_ms)
            if reply is not None:
                span.set_attributes(_reply_attributes(reply))
    _describe_step(provider.name, reply, request, result, latency_ms)
    return result


def _request_attributes(provider: str, request: LLMRequest) -> dict[str, Any]:
    """A model call's span attributes, from the OpenTelemetry GenAI semantic conventions."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the name before gen_ai.provider.name, still read by many backends
        "gen_ai.request.model": request["model"],
        "gen_ai.request.max_tokens": request.get("max_tokens"),
        "gen_ai.request.temperature": request.get("temperature"),
        "gen_ai.output_type": "json" if request.get("json") else "text",
    }


def _reply_attributes(reply: ProviderReply) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.response.finish_reasons": [reply.finish_reason],
        "gen_ai.usage.input_tokens": reply.input_tokens,
        "gen_ai.usage.output_tokens": reply.output_tokens,
    }
    if reply.model:
        attributes["gen_ai.response.model"] = reply.model
    if reply.response_id:
        attributes["gen_ai.response.id"] = reply.response_id
    return attributes


def normalise(reply: ProviderReply, *, json_mode: bool) -> dict:
    calls = []
    for index, call in enumerate(reply.tool_calls):
        arguments = call.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = jsoninput.parse(arguments or "{}", "the arguments", check=False)
            except ValueError as exc:
                message = f"tool call {call.get('name')!r} has unparsable arguments: {exc}"
                raise MalformedReply(redact(message))
        if not isinstance(arguments, dict) or not call.get("name"):
            raise MalformedReply(f"tool call {index} has no name or its arguments are not an object")
        calls.append({"id": call.get("id") or f"call_{index}", "name": call["name"], "arguments": arguments})
    content = reply.content or None
    if content is None and not calls:
        raise MalformedReply(f"the model returned neither text nor tool calls ({reply.finish_reason})")
    result: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "tool_calls": calls,
        "finish_reason": reply.finish_reason,
    }
    if json_mode and not calls:
        result["data"] = parse_json_reply(content or "")
    return result


def parse_json_reply(text: str) -> Any:
    cleaned = text.strip()
    if cleaned.startswith("```"):  # models like to fence JSON even when asked not to
        cleaned = cleaned.strip("`").removeprefix("json").strip()
    try:
        return jsoninput.parse(cleaned, "the reply", check=False)
    except ValueError as exc:
        raise MalformedReply(redact(f"the model was asked for JSON but replied {text[:200]!r}: {exc}"))


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """US dollars from the AGENTS_PRICES table, or None for a model without a price.

    A dated snapshot the provider reports ("gpt-4o-mini-2024-07-18") takes the price of
    the longest table entry it starts with.
    """
    prices = settings.AGENTS_PRICES
    price = prices.get(model)
    if price is None:
        names = [name for name in prices if model.startswith(name + "-")]
        if not names:
            return None
        price = prices[max(names, key=len)]
    cost = (input_tokens * price["input"] + output_tokens * price["output"]) / 1_000_000
    return round(cost, 8)


def _in_step():
    try:
        return current_step()
    except RuntimeError:
        return None


def record_call(provider: str, model: str, outcome: str, usage: tuple[int, int], latency_ms: int) -> None:
    """A billing row (ProviderCall) for one request a provider received, inside a step or not."""
    from agentkit.models import ProviderCall

    info = _in_step()
    try:
        ProviderCall.objects.create(
            run_id=info.run_id if info else None,
            position=info.position if info else None,
            attempt=info.attempt if info else 1,
            idempotency_key=info.idempotency_key if info else "",
            provider=provider,
            model=model[:100],
            outcome=outcome[:100],
            input_tokens=usage[0],
            output_tokens=usage[1],
            cost_usd=estimate_cost(model, *usage) or 0.0,
            latency_ms=latency_ms,
            pid=os.getpid(),
        )
    except DatabaseError:
        # Accounting must not fail a call the provider already answered.
        log.warning("could not record a %s call", provider, exc_info=True)


def _clip(messages: list[dict]) -> list[dict]:
    clipped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and len(content) > META_TEXT_LIMIT:
            message = {**message, "content": content[:META_TEXT_LIMIT] + " …[cut]"}
        clipped.append(message)
    return clipped


def _describe_step(provider: str, reply: ProviderReply, request: LLMRequest, result: dict, latency_ms: int):
    reference = request.get("history")
    sent = request["messages"][reference["messages"] :] if reference else request["messages"]
    describe_call(
        provider,
        reply.model or request["model"],
        request={
            # Only what is new since the call it references: the run page rebuilds the rest.
            **({"history": dict(reference)} if reference else {}),
            "messages": sent,
            "tools": [tool["name"] for tool in request.get("tools") or []],
            "json": bool(request.get("json")),
            "temperature": request.get("temperature"),
            "max_tokens": request.get("max_tokens"),
        },
        response={
            "id": reply.response_id,
            "content": result["content"],
            "tool_calls": result["tool_calls"],
            "finish_reason": result["finish_reason"],
        },
        usage=(reply.input_tokens, reply.output_tokens),
        latency_ms=latency_ms,
    )


def describe_call(
    provider: str, model: str, *, request: dict, response: dict, usage: tuple[int, int], latency_ms: int
) -> None:
    """Put a model call's facts on the running step's checkpoint meta, as the run page reads them.

    `request` holds the provider-neutral `messages` (see the module docstring) and the
    `tools` offered; `response` the reply's `content`, `tool_calls` and `finish_reason`.
    Outside a step it does nothing. Other integrations (agentkit.integrations) call it too.
    """
    info = _in_step()
    if info is None:
        return
    # Shown on the run page and exported: no secret a prompt or a reply happened to hold.
    info.meta.update(
        kind="llm",
        label=info.name.partition(":")[2],
        provider=provider,
        model=model,
        request=redact_value({**request, "messages": _clip(request.get("messages") or [])}),
        response=redact_value(response),
        input_tokens=usage[0],
        output_tokens=usage[1],
        latency_ms=latency_ms,
        cost_usd=estimate_cost(model, *usage),
        attempt=info.attempt,
    )
