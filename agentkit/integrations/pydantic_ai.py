"""Durable Pydantic AI agents: each model request and each tool call is a checkpointed step.

    from pydantic_ai import Agent
    from agentkit.integrations.pydantic_ai import DurableAgent, ToolOptions

    agent = Agent("openai:gpt-4o-mini", name="support", instructions="...")
    durable = DurableAgent(agent, tools={"refund": ToolOptions(RetryPolicy(max_attempts=5), timeout=20)})

    @workflow("support")
    def support(ctx, data):
        return durable.run_sync(ctx, data["ticket"]).output

The agent itself is unchanged. `run_sync` runs it with a capability whose hooks send every
model request (step `llm:<agent name>`) and tool call (step `tool:<tool name>`) through
`ctx.step`: a replay hands back the recorded response or tool result, so the message history
is rebuilt without calling the model or the tool again. Model steps record tokens, cost and
the conversation like agentkit.llm's, and a billing row per request. A tool that needs approval
(`requires_approval=True`, or raising `ApprovalRequired`) ends the agent's run with
`DeferredToolRequests`; the run then waits for an `approval` signal per call (shown in the
inbox with its prompt) and the agent goes on with the decisions.

Why a second thread: Pydantic AI is async and `ctx.step` is synchronous, so the agent runs on
an event loop of its own thread (agentkit.integrations.agent_thread). Tool calls
run one after another, so steps take the same positions on every replay. Toolsets that do
I/O to list their tools (MCP servers) are not checkpointed here.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ModelHTTPError,
    ToolFailedError,
    ToolRetryError,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolDenied
from pydantic_core import to_jsonable_python

from agentkit import faults, llm
from agentkit.integrations.agent_thread import Bridge, ToolOptions
from runs.workflow import NonRetryableError, RetryPolicy, current_step, step

APPROVAL_SIGNAL = "approval"
# How a recorded tool output says the tool raised one of Pydantic AI's control-flow exceptions.
RAISED = "__pydantic_ai_raised__"


@dataclass
class DurableAgent:
    """An existing `pydantic_ai.Agent` run durably inside a workflow (see the module docstring)."""

    agent: Agent
    # Step names say which agent made the call: llm:<name>. Defaults to the agent's name.
    name: str = ""
    tools: Mapping[str, ToolOptions] = field(default_factory=dict)
    default_tool: ToolOptions = field(default_factory=ToolOptions)
    model_retry: RetryPolicy | None = None  # default: agentkit.llm.retry_policy()
    model_timeout: float | None = None  # default: AGENTS_LLM_TIMEOUT + 5 s
    approval_signal: str = APPROVAL_SIGNAL
    # How long each approval waits; then the call is denied ("nobody approved it in time").
    approval_timeout: timedelta | float | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.agent.name or "agent"

    def run_sync(self, ctx, user_prompt: str | None = None, **options: Any):
        """Run the agent to its output as checkpointed steps; returns Pydantic AI's AgentRunResult.

        Options go to `Agent.run` (deps, message_history, model_settings, usage_limits...).
        """
        history = options.pop("message_history", None)
        decisions = options.pop("deferred_tool_results", None)
        output_type = options.pop("output_type", None) or self.agent.output_type
        while True:
            run = functools.partial(self._run, user_prompt, history, decisions, output_type, options)
            result = Bridge(ctx).drive(run)
            if not isinstance(result.output, DeferredToolRequests):
                return result
            decisions = self._ask_people(ctx, result.output)
            history, user_prompt = result.all_messages(), None
            options["usage"] = result.usage  # the result counts the requests and calls of every part

    async def _run(self, user_prompt, history, decisions, output_type, options, bridge: Bridge):
        checkpoints = _Checkpoints(self, bridge)
        with Agent.parallel_tool_call_execution_mode("sequential"):
            return await self.agent.run(
                user_prompt,
                message_history=history,
                deferred_tool_results=decisions,
                output_type=_with_deferred(output_type),
                capabilities=[checkpoints],
                **options,
            )

    def _ask_people(self, ctx, requests: DeferredToolRequests) -> DeferredToolResults:
        if requests.calls:
            names = ", ".join(call.tool_name for call in requests.calls)
            raise NonRetryableError(f"tools executed outside the agent are not supported here: {names}")
        approvals: dict[str, Any] = {}
        denied = {"approved": False, "note": "nobody approved it in time"}
        for call in requests.approvals:
            decision = ctx.wait_for_signal(
                self.approval_signal,
                timeout=self.approval_timeout,
                default=denied,
                prompt=_approval_prompt(self.name, call),
            )
            approvals[call.tool_call_id] = _decision(decision)
        return DeferredToolResults(approvals=approvals)

    # --- step definitions ------------------------------------------------------------

    def model_step(self, bridge: Bridge, send: Callable[[], Awaitable[ModelResponse]], messages) -> Callable:
        def request_model(summary: dict) -> dict:
            faults.inject()
            started = time.monotonic()
            response, outcome = None, "ok"
            try:
                response = bridge.run_in_agent_loop(send())
            except BaseException as exc:
                outcome = type(exc).__name__
                if isinstance(exc, ModelHTTPError) and _final_status(exc.status_code):
                    raise _refused(exc) from exc
                raise
            finally:
                latency_ms = int((time.monotonic() - started) * 1000)
                usage = (response.usage.input_tokens, response.usage.output_tokens) if response else (0, 0)
                model = (response and response.model_name) or _model_name(self.agent)
                llm.record_call(_provider(self.agent, response), model, outcome, usage, latency_ms)
            llm.describe_call(
                _provider(self.agent, response),
                response.model_name or _model_name(self.agent),
                request={"messages": _turns(messages), "tools": summary.get("tools", [])},
                response=_reply(response),
                usage=(response.usage.input_tokens, response.usage.output_tokens),
                latency_ms=latency_ms,
            )
            return ModelMessagesTypeAdapter.dump_python([response], mode="json")[0]

        return step(
            request_model,
            name=f"llm:{self.name}",
            retry=self.model_retry or llm.retry_policy(),
            timeout=self.model_timeout or settings.AGENTS_LLM_TIMEOUT + 5,
        )

    def tool_step(self, bridge: Bridge, tool_name: str, execute: Callable[[], Awaitable[Any]]) -> Callable:
        options = self.tools.get(tool_name, self.default_tool)

        def call_tool(arguments: dict, call_id: str) -> Any:
            current_step().meta.update(kind="tool", tool=tool_name, arguments=arguments, call_id=call_id)
            faults.inject()
            try:
                return to_jsonable_python(bridge.run_in_agent_loop(execute()), fallback=str)
            except ToolRetryError as exc:  # the tool raised ModelRetry: the model is told to try again
                return {RAISED: "ToolRetryError", "part": _dump_part(exc.tool_retry)}
            except ToolFailedError as exc:  # the tool raised ToolFailed: the model is told it failed
                return {RAISED: "ToolFailedError", "part": _dump_part(exc.tool_failed)}
            except (ApprovalRequired, CallDeferred) as exc:
                return {RAISED: type(exc).__name__, "metadata": exc.metadata}

        return step(call_tool, name=f"tool:{tool_name}", retry=options.retry, timeout=options.timeout)


class _Checkpoints(AbstractCapability):
    """The hooks that turn the agent's model requests and tool executions into steps."""

    def __init__(self, durable: DurableAgent, bridge: Bridge):
        super().__init__()
        self.durable = durable
        self.bridge = bridge

    async def wrap_model_request(self, ctx, *, request_context, handler) -> ModelResponse:
        messages = list(request_context.messages)
        tools = [
            tool.name for tool in getattr(request_context.model_request_parameters, "function_tools", [])
        ]
        step_fn = self.durable.model_step(self.bridge, lambda: handler(request_context), messages)
        data = await self.bridge.step(step_fn, {"messages": len(messages), "tools": tools})
        return ModelMessagesTypeAdapter.validate_python([data])[0]

    async def wrap_tool_execute(self, ctx, *, call, tool_def, args, handler) -> Any:
        step_fn = self.durable.tool_step(self.bridge, call.tool_name, lambda: handler(args))
        value = await self.bridge.step(step_fn, to_jsonable_python(args, fallback=str), call.tool_call_id)
        if isinstance(value, dict) and RAISED in value:
            raise _rebuilt(value)
        return value


def _with_deferred(output_type: Any) -> list:
    """The run's output types, with DeferredToolRequests: an approval ends the agent's run here."""
    types = list(output_type) if isinstance(output_type, (list, tuple)) else [output_type]
    return types if DeferredToolRequests in types else [*types, DeferredToolRequests]


def _dump_part(part) -> dict:
    # A request part alone has no adapter of its own; as the only part of a request it has.
    return ModelMessagesTypeAdapter.dump_python([ModelRequest(parts=[part])], mode="json")[0]["parts"][0]


def _load_part(data: dict):
    return ModelMessagesTypeAdapter.validate_python([{"kind": "request", "parts": [data]}])[0].parts[0]


def _rebuilt(recorded: dict) -> Exception:
    kind = recorded[RAISED]
    if kind == "ToolRetryError":
        return ToolRetryError(_load_part(recorded["part"]))
    if kind == "ToolFailedError":
        return ToolFailedError(_load_part(recorded["part"]))
    if kind == "ApprovalRequired":
        return ApprovalRequired(recorded.get("metadata"))
    return CallDeferred(recorded.get("metadata"))


def _decision(payload: Any) -> bool | ToolDenied:
    if isinstance(payload, dict) and payload.get("approved") is True:
        return True
    note = payload.get("note") if isinstance(payload, dict) else None
    return ToolDenied(f"A person denied this call: {note}" if note else "A person denied this call.")


def _approval_prompt(agent_name: str, call: ToolCallPart) -> str:
    arguments = json.dumps(call.args_as_dict(), ensure_ascii=False, sort_keys=True)
    return f'Agent "{agent_name}" asks to call {call.tool_name}({arguments}). Approve?'


def _refused(exc: ModelHTTPError) -> llm.LLMError:
    """The non-retryable error of agentkit.llm that a provider's 4xx stands for."""
    kind = llm.AuthenticationFailed if exc.status_code in (401, 403) else llm.BadRequest
    return kind(f"{exc.model_name}: HTTP {exc.status_code}: {exc.body}")


def _final_status(status: int) -> bool:
    """A 4xx that asking again cannot fix (not 408 timeout, 409 conflict, 429 rate limit)."""
    return 400 <= status < 500 and status not in (408, 409, 429)


def _provider(agent: Agent, response: ModelResponse | None) -> str:
    if response is not None and response.provider_name:
        return response.provider_name
    model = agent.model
    return getattr(model, "system", None) or "pydantic-ai"


def _model_name(agent: Agent) -> str:
    model = agent.model
    return getattr(model, "model_name", None) or str(model or "")


# --- the conversation as the run page shows LLM steps (agentkit.llm's message format) --------


def _turns(messages: list[ModelMessage]) -> list[dict]:
    turns: list[dict] = []
    instructions = None
    for message in messages:
        if isinstance(message, ModelResponse):
            turns.append({"role": "assistant", **_reply(message)})
            continue
        # Every request carries the instructions again; show them once, and again when they change.
        if isinstance(message, ModelRequest) and message.instructions not in (None, instructions):
            instructions = message.instructions
            turns.append({"role": "system", "content": instructions})
        for part in message.parts:
            turns.extend(_request_turn(part))
    return turns


def _request_turn(part) -> list[dict]:
    if isinstance(part, SystemPromptPart):
        return [{"role": "system", "content": part.content}]
    if isinstance(part, UserPromptPart):
        content = part.content if isinstance(part.content, str) else str(part.content)
        return [{"role": "user", "content": content}]
    if isinstance(part, ToolReturnPart):
        content = part.model_response_str()
        return [
            {"role": "tool", "tool_call_id": part.tool_call_id, "name": part.tool_name, "content": content}
        ]
    if isinstance(part, RetryFeedbackPart):  # the reply could not be used: the model is told why
        return [{"role": "user", "content": part.model_response()}]
    return []


def _reply(response: ModelResponse) -> dict:
    texts = [part.content for part in response.parts if isinstance(part, TextPart)]
    calls = [
        {"id": part.tool_call_id, "name": part.tool_name, "arguments": part.args_as_dict()}
        for part in response.parts
        if isinstance(part, ToolCallPart)
    ]
    return {
        "id": response.provider_response_id or "",
        "content": "".join(texts) or None,
        "tool_calls": calls,
        "finish_reason": response.finish_reason or ("tool_calls" if calls else "stop"),
    }
