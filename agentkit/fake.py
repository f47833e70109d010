"""An offline, deterministic model: scripted replies keyed by the conversation.

How a reply is chosen, first match wins:

1. `script(messages, reply)`: an exact conversation gets a fixed reply.
2. `@responder(system_prompt)`: a function that computes the reply from the request,
   used for every conversation whose system prompt starts with that text. The demo
   agents register theirs; since they are registered when the module is imported,
   worker processes know them too.
3. Otherwise an echo of the last user message (as `{"echo": ...}` in JSON mode).

Failure modes, for demos and tests: `fail_next("timeout", "rate_limit", "malformed")`
queues failures for this process's next calls; `AGENTS_FAKE_FAILURE_RATE` fails that
share of calls with one of `AGENTS_FAKE_FAILURE_MODES`, decided by a hash of the
step's idempotency key and attempt, so the same run fails the same way every time
and a retry (a new attempt) usually gets through.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from django.conf import settings

from agentkit.llm import LLMRequest, ProviderReply, ProviderTimeout, RateLimited, _in_step

Reply = str | dict
Responder = Callable[[LLMRequest], Reply]

SCRIPTS: dict[str, Reply] = {}
RESPONDERS: dict[str, Responder] = {}
FAILURES: deque[str] = deque()
MODES = ("timeout", "rate_limit", "malformed")


def fingerprint(messages: list[dict]) -> str:
    """A stable key for a conversation: roles, texts and tool calls, nothing else."""
    essentials = [
        {
            "role": m.get("role"),
            "content": m.get("content"),
            "tool_calls": [(c.get("name"), c.get("arguments")) for c in m.get("tool_calls") or []],
            "tool_call_id": m.get("tool_call_id"),
        }
        for m in messages
    ]
    return hashlib.sha256(json.dumps(essentials, sort_keys=True, default=str).encode()).hexdigest()


def script(messages: list[dict], reply: Reply) -> None:
    """Answer exactly this conversation with `reply`: text, or {"content", "tool_calls"}."""
    SCRIPTS[fingerprint(messages)] = reply


def responder(system_prompt: str) -> Callable[[Responder], Responder]:
    def register(fn: Responder) -> Responder:
        RESPONDERS[system_prompt] = fn
        return fn

    return register


def fail_next(*modes: str) -> None:
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown failure mode {mode!r} (use {', '.join(MODES)})")
    FAILURES.extend(modes)


def reset() -> None:
    """Forget scripted conversations and queued failures (tests)."""
    SCRIPTS.clear()
    FAILURES.clear()


def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


class FakeProvider:
    name = "fake"

    @property
    def default_model(self) -> str:
        return settings.AGENTS_FAKE_MODEL

    def complete(self, request: LLMRequest) -> ProviderReply:
        mode = self._failure(request)
        if settings.AGENTS_FAKE_LATENCY:
            time.sleep(settings.AGENTS_FAKE_LATENCY)
        if mode == "timeout":
            raise ProviderTimeout("fake model: request timed out (injected)")
        if mode == "rate_limit":
            raise RateLimited("fake model: 429 too many requests (injected)", retry_after=1.0)
        content, calls = self._answer(request)
        if mode == "malformed":
            content, calls = self._corrupt(content, calls, request)
        messages = request["messages"]
        prompt = json.dumps(messages, default=str) + json.dumps(request.get("tools") or [])
        completion = (content or "") + json.dumps(calls)
        return ProviderReply(
            content=content,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            input_tokens=approx_tokens(prompt),
            output_tokens=approx_tokens(completion) if (content or calls) else 0,
            model=request["model"],
            response_id="fake-" + fingerprint(messages)[:16],
        )

    # --- choosing the reply ---------------------------------------------------------

    def _answer(self, request: LLMRequest) -> tuple[str | None, list[dict]]:
        messages = request["messages"]
        reply = SCRIPTS.get(fingerprint(messages))
        if reply is None:
            prompt = messages[0].get("content") or "" if messages and messages[0]["role"] == "system" else ""
            for key, fn in RESPONDERS.items():
                if prompt.startswith(key):
                    reply = fn(request)
                    break
        if reply is None:
            reply = self._echo(request)
        if isinstance(reply, str):
            return reply, []
        calls = [
            {
                "id": call.get("id") or f"call_{len(messages)}_{index}",
                "name": call["name"],
                # As the wire carries them: JSON text, parsed (and checked) by agentkit.llm.
                "arguments": json.dumps(call.get("arguments") or {}),
            }
            for index, call in enumerate(reply.get("tool_calls") or [])
        ]
        return reply.get("content"), calls

    @staticmethod
    def _echo(request: LLMRequest) -> str:
        said = next(
            (m.get("content") or "" for m in reversed(request["messages"]) if m["role"] == "user"), ""
        )
        if request.get("json"):
            return json.dumps({"echo": said})
        return f"(fake model) You said: {said[:500]}"

    # --- failures ---------------------------------------------------------------------

    def _failure(self, request: LLMRequest) -> str | None:
        if FAILURES:
            return FAILURES.popleft()
        rate = settings.AGENTS_FAKE_FAILURE_RATE
        modes = settings.AGENTS_FAKE_FAILURE_MODES
        if not rate or not modes:
            return None
        info = _in_step()
        seed = f"{info.idempotency_key}:{info.attempt}" if info else fingerprint(request["messages"])
        digest = hashlib.sha256(seed.encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 >= rate:
            return None
        return modes[digest[4] % len(modes)]

    @staticmethod
    def _corrupt(content: str | None, calls: list[dict], request: LLMRequest) -> tuple[Any, list[dict]]:
        if calls:
            arguments = calls[0]["arguments"]
            broken = dict(calls[0], arguments=arguments[: max(len(arguments) // 2, 1)])
            return content, [broken, *calls[1:]]
        if request.get("json") and content:
            return content[: max(len(content) // 2, 1)] + " …", []
        return None, []
