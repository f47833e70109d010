"""Durable OpenAI Agents SDK agents: each model call and each function tool call is a checkpointed step.

    from agents import Agent, function_tool
    from agentkit.integrations.openai_agents import DurableRunner, ToolOptions

    agent = Agent(name="support", instructions="...", model="gpt-4o-mini", tools=[refund])
    runner = DurableRunner(tools={"refund": ToolOptions(RetryPolicy(max_attempts=5), timeout=20)})

    @workflow("support")
    def support(ctx, data):
        return runner.run(ctx, agent, data["ticket"]).final_output

The agent itself is unchanged. `run` hands `Runner.run` a copy of it whose model sends every
`Model.get_response` through `ctx.step` (step `llm:<agent name>`) and whose function tools
send every call through `ctx.step` (step `tool:<tool name>`): a replay hands back the recorded
response or tool output, so the conversation is rebuilt without calling the model or the tool
again. Model steps record tokens, cost and the conversation like agentkit.llm's, and a billing
row per request.

A tool's exception is retried by its step (ToolOptions); once the step fails for good the run
fails there, rather than the SDK telling the model the tool failed. Handoffs, hosted tools
(web search, code interpreter), MCP servers and streaming are not checkpointed here.

The SDK's own tracing sends traces to OpenAI; importing this module turns it off (runs have
traces of their own: runs/tracing.py). Call `agents.set_tracing_disabled(False)` to want it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, Model, ModelResponse, RunConfig, Runner, set_tracing_disabled
from agents.items import TResponseOutputItem
from agents.tool import set_function_tool_failure_error_function
from agents.usage import Usage
from django.conf import settings
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from agentkit import faults, llm
from agentkit.integrations.agent_thread import Bridge, ToolOptions
from runs.workflow import RetryPolicy, StepFailed, current_step, step

__all__ = ["DurableRunner", "ToolOptions"]

# No trace leaves the machine unless someone asks for it.
set_tracing_disabled(True)

_OUTPUT = TypeAdapter(list[TResponseOutputItem])


@dataclass
class DurableRunner:
    """Runs `agents.Agent`s durably inside a workflow (see the module docstring)."""

    tools: Mapping[str, ToolOptions] = field(default_factory=dict)
    default_tool: ToolOptions = field(default_factory=ToolOptions)
    model_retry: RetryPolicy | None = None  # default: agentkit.llm.retry_policy()
    model_timeout: float | None = None  # default: AGENTS_LLM_TIMEOUT + 5 s

    def run(self, ctx, agent: Agent, input: str | list, **options: Any):
        """Run the agent to its final output as checkpointed steps; returns the SDK's RunResult.

        Options go to `Runner.run` (context, max_turns, run_config...).
        """
        config = options.pop("run_config", None) or RunConfig(tracing_disabled=True)
        # A run_config's model overrides the agent's: it is the one to checkpoint.
        model = config.model or agent.model
        config = dataclasses.replace(config, model=None)

        async def run(bridge: Bridge):
            checkpointed = self._checkpointed(agent, model, config, bridge)
            return await Runner.run(checkpointed, input, run_config=config, **options)

        try:
            return Bridge(ctx).drive(run)
        except Exception as exc:
            # The SDK wraps a tool's exception in its UserError: the run fails at the tool's step.
            failure = _step_failure(exc)
            if failure is None:
                raise
            raise failure from None

    def _checkpointed(self, agent: Agent, model: Model | str | None, config: RunConfig, bridge) -> Agent:
        if not isinstance(model, Model):
            model = config.model_provider.get_model(model)
        tools = [self._tool(tool, bridge) if isinstance(tool, FunctionTool) else tool for tool in agent.tools]
        return agent.clone(model=_CheckpointedModel(self, bridge, agent.name, model), tools=tools)

    def _tool(self, tool: FunctionTool, bridge: Bridge) -> FunctionTool:
        # A copy that raises instead of telling the model: the step retries the tool's errors.
        raising = dataclasses.replace(tool)
        set_function_tool_failure_error_function(raising, None)

        async def invoke(tool_context, arguments: str) -> Any:
            step_fn = self.tool_step(
                bridge, tool.name, lambda: raising.on_invoke_tool(tool_context, arguments)
            )
            return await bridge.step(step_fn, _arguments(arguments), tool_context.tool_call_id)

        return dataclasses.replace(tool, on_invoke_tool=invoke)

    # --- step definitions ------------------------------------------------------------

    def model_step(
        self, bridge: Bridge, agent_name: str, model: Model, send: Callable[[], Awaitable[ModelResponse]]
    ) -> Callable:
        def request_model(summary: dict) -> dict:
            faults.inject()
            started = time.monotonic()
            response, outcome = None, "ok"
            name = _model_name(model)
            try:
                response = bridge.run_in_agent_loop(send())
            except BaseException as exc:
                outcome = type(exc).__name__
                raise
            finally:
                latency_ms = int((time.monotonic() - started) * 1000)
                usage = (response.usage.input_tokens, response.usage.output_tokens) if response else (0, 0)
                llm.record_call(_provider(model), name, outcome, usage, latency_ms)
            llm.describe_call(
                _provider(model),
                name,
                request={"messages": summary["messages"], "tools": summary["tools"]},
                response=_reply(response),
                usage=usage,
                latency_ms=latency_ms,
            )
            return _dump(response)

        return step(
            request_model,
            name=f"llm:{agent_name}",
            retry=self.model_retry or llm.retry_policy(),
            timeout=self.model_timeout or settings.AGENTS_LLM_TIMEOUT + 5,
        )

    def tool_step(self, bridge: Bridge, tool_name: str, execute: Callable[[], Awaitable[Any]]) -> Callable:
        options = self.tools.get(tool_name, self.default_tool)

        def call_tool(arguments: Any, call_id: str) -> Any:
            current_step().meta.update(kind="tool", tool=tool_name, arguments=arguments, call_id=call_id)
            faults.inject()
            return to_jsonable_python(bridge.run_in_agent_loop(execute()), fallback=str)

        return step(call_tool, name=f"tool:{tool_name}", retry=options.retry, timeout=options.timeout)


class _CheckpointedModel(Model):
    """The agent's model, each get_response a step; streaming is not checkpointed."""

    def __init__(self, runner: DurableRunner, bridge: Bridge, agent_name: str, model: Model):
        self.runner, self.bridge, self.agent_name, self.model = runner, bridge, agent_name, model

    async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
        def send() -> Awaitable[ModelResponse]:
            return self.model.get_response(system_instructions, input, model_settings, tools, *args, **kwargs)

        summary = {
            "messages": _turns(system_instructions, input),
            "tools": [tool.name for tool in tools],
        }
        step_fn = self.runner.model_step(self.bridge, self.agent_name, self.model, send)
        data = await self.bridge.step(step_fn, summary)
        return _load(data)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError("streamed runs are not checkpointed: use DurableRunner.run")


def _step_failure(exc: BaseException) -> StepFailed | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StepFailed):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return arguments


def _dump(response: ModelResponse) -> dict:
    usage = response.usage
    return {
        "output": _OUTPUT.dump_python(list(response.output), mode="json"),
        "usage": {
            "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
        },
        "response_id": response.response_id,
        "request_id": response.request_id,
    }


def _load(data: dict) -> ModelResponse:
    return ModelResponse(
        output=_OUTPUT.validate_python(data["output"]),
        usage=Usage(**data["usage"]),
        response_id=data.get("response_id"),
        request_id=data.get("request_id"),
    )


def _provider(model: Model) -> str:
    return "openai" if type(model).__module__.startswith("agents.models.openai") else "openai-agents"


def _model_name(model: Model) -> str:
    return str(getattr(model, "model", None) or type(model).__name__)


# --- the conversation as the run page shows LLM steps (agentkit.llm's message format) --------


def _turns(instructions: str | None, input: str | list) -> list[dict]:
    turns: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(input, str):
        return [*turns, {"role": "user", "content": input}]
    for item in to_jsonable_python(input, fallback=str):
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {"id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")}
            turns.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else json.dumps(output)
            turns.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind == "message":
            turns.append({"role": item.get("role", "user"), "content": _text(item.get("content"))})
    return turns


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _reply(response: ModelResponse) -> dict:
    texts, calls = [], []
    for item in response.output:
        if item.type == "message":
            texts.extend(getattr(part, "text", "") for part in item.content)
        elif item.type == "function_call":
            calls.append({"id": item.call_id, "name": item.name, "arguments": _arguments(item.arguments)})
    return {
        "id": response.response_id or "",
        "content": "".join(texts) or None,
        "tool_calls": calls,
        "finish_reason": "tool_calls" if calls else "stop",
    }
