"""OpenAI and Anthropic through their official SDKs, imported only when used.

Each provider translates agentkit.llm's neutral messages into its API's shape, maps
the reply and its token usage back, and turns SDK exceptions into agentkit.llm's
errors so the retry policy can tell a rate limit (retry) from a refused key (stop).
The SDKs' own retries are off: the durable engine retries, and records every attempt.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from agentkit.llm import (
    AuthenticationFailed,
    BadRequest,
    LLMError,
    LLMRequest,
    ProviderReply,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from runs.redaction import redact


def error_for_status(status: int, message: str, *, code: str = "", retry_after: float | None = None):
    """The agentkit.llm error for an HTTP error status from a provider."""
    if status in (401, 403):
        return AuthenticationFailed(message)
    if status == 429:
        if code == "insufficient_quota":  # out of credit: waiting does not help
            return BadRequest(message)
        return RateLimited(message, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message)
    if status == 409 or status >= 500:  # 529: Anthropic is overloaded
        return ProviderUnavailable(message)
    return BadRequest(message)


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


def _error_code(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or "")
    return ""


def _translate(exc: Exception, sdk) -> LLMError | None:
    """Map an SDK exception (openai and anthropic share the class names) to ours. Messages
    are redacted: a provider may echo the key it was sent."""
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderTimeout(redact(f"{type(exc).__name__}: {exc}"))
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderUnavailable(redact(f"{type(exc).__name__}: {exc}"))
    if isinstance(exc, sdk.APIStatusError):
        return error_for_status(
            exc.status_code,
            redact(f"{type(exc).__name__} ({exc.status_code}): {exc.message}"),
            code=_error_code(exc.body),
            retry_after=_retry_after(exc.response),
        )
    return None


class OpenAIProvider:
    name = "openai"

    def __init__(self, api_key: str, *, http_client=None, base_url: str | None = None):
        import openai

        self._sdk = openai
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=settings.AGENTS_LLM_TIMEOUT,
            http_client=http_client,
        )

    @property
    def default_model(self) -> str:
        return settings.AGENTS_OPENAI_MODEL

    def complete(self, request: LLMRequest) -> ProviderReply:
        params: dict[str, Any] = {
            "model": request["model"],
            "messages": [self._message(m) for m in request["messages"]],
            "max_completion_tokens": request.get("max_tokens") or settings.AGENTS_LLM_MAX_TOKENS,
        }
        if request.get("tools"):
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool["name"],
                        "description": tool["description"],
                        "parameters": tool["parameters"],
                    },
                }
                for tool in request["tools"]
            ]
        if request.get("json") and not request.get("tools"):
            params["response_format"] = {"type": "json_object"}
        if request.get("temperature") is not None:
            params["temperature"] = request["temperature"]
        try:
            completion = self._client.chat.completions.create(**params)
        except self._sdk.OpenAIError as exc:
            unknown = ProviderUnavailable(redact(f"{type(exc).__name__}: {exc}"))
            raise (_translate(exc, self._sdk) or unknown) from exc
        return self._reply(completion)

    @staticmethod
    def _message(message: dict) -> dict:
        role = message["role"]
        if role == "tool":
            return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": message["content"]}
        if role == "assistant" and message.get("tool_calls"):
            return {
                "role": "assistant",
                "content": message.get("content"),
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
                    }
                    for call in message["tool_calls"]
                ],
            }
        return {"role": role, "content": message.get("content") or ""}

    @staticmethod
    def _reply(completion) -> ProviderReply:
        if not completion.choices:
            return ProviderReply(content=None, finish_reason="no choices", model=completion.model or "")
        choice = completion.choices[0]
        calls = [
            {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
            for call in choice.message.tool_calls or []
            if getattr(call, "function", None) is not None
        ]
        usage = completion.usage
        return ProviderReply(
            content=choice.message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason or "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            model=completion.model or "",
            response_id=completion.id or "",
        )


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, api_key: str, *, http_client=None, base_url: str | None = None):
        import anthropic

        self._sdk = anthropic
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=settings.AGENTS_LLM_TIMEOUT,
            http_client=http_client,
        )

    @property
    def default_model(self) -> str:
        return settings.AGENTS_ANTHROPIC_MODEL

    def complete(self, request: LLMRequest) -> ProviderReply:
        system = "\n\n".join(m["content"] or "" for m in request["messages"] if m["role"] == "system")
        if request.get("json"):
            system = (system + "\n\nReply with one JSON value and nothing else.").strip()
        params: dict[str, Any] = {
            "model": request["model"],
            "max_tokens": request.get("max_tokens") or settings.AGENTS_LLM_MAX_TOKENS,
            "messages": self._messages(request["messages"]),
        }
        if system:
            params["system"] = system
        if request.get("tools"):
            params["tools"] = [
                {"name": tool["name"], "description": tool["description"], "input_schema": tool["parameters"]}
                for tool in request["tools"]
            ]
        if request.get("temperature") is not None:
            params["temperature"] = request["temperature"]
        try:
            message = self._client.messages.create(**params)
        except self._sdk.AnthropicError as exc:
            unknown = ProviderUnavailable(redact(f"{type(exc).__name__}: {exc}"))
            raise (_translate(exc, self._sdk) or unknown) from exc
        return self._reply(message)

    @staticmethod
    def _messages(messages: list[dict]) -> list[dict]:
        """Anthropic's shape: no system role, tool results are user content blocks."""
        out: list[dict] = []
        for message in messages:
            role = message["role"]
            if role == "system":
                continue
            if role == "tool":
                block = {
                    "type": "tool_result",
                    "tool_use_id": message["tool_call_id"],
                    "content": message["content"],
                }
                if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                    out[-1]["content"].append(block)  # results of one turn's calls go together
                else:
                    out.append({"role": "user", "content": [block]})
            elif role == "assistant":
                blocks: list[dict] = []
                if message.get("content"):
                    blocks.append({"type": "text", "text": message["content"]})
                for call in message.get("tool_calls") or []:
                    use = {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["name"],
                        "input": call["arguments"],
                    }
                    blocks.append(use)
                out.append({"role": "assistant", "content": blocks})
            else:
                out.append({"role": "user", "content": message.get("content") or ""})
        return out

    @staticmethod
    def _reply(message) -> ProviderReply:
        texts, calls = [], []
        for block in message.content or []:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append({"id": block.id, "name": block.name, "arguments": dict(block.input or {})})
        usage = message.usage
        return ProviderReply(
            content="".join(texts) or None,
            tool_calls=calls,
            finish_reason=message.stop_reason or "",
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            model=message.model or "",
            response_id=message.id or "",
        )
