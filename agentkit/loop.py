"""The durable agent loop: model → tool calls → model … until a final answer or the budget.

    from agentkit.loop import run_agent

    @workflow("research")
    def research(ctx, data):
        result = run_agent(ctx, system=PROMPT, user=data["question"], tools=["search", "read"])
        return {"answer": result["answer"]}

Every model call and every tool call is its own checkpointed step, so a crash in
the middle of a 30-call conversation resumes at the next call: replay hands back
the recorded replies and tool results, which rebuild the conversation exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from agentkit import llm
from agentkit import tools as toolbox
from runs.workflow import StepFailed


class AgentResult(TypedDict):
    answer: str | None
    # "final": the model answered; "budget": max_steps ran out first.
    stopped: str
    model_calls: int
    tool_calls: int
    messages: list[dict]


def run_agent(
    ctx,
    *,
    system: str,
    user: str | None = None,
    messages: Sequence[dict] = (),
    tools: Sequence[str] = (),
    max_steps: int = 30,
    label: str = "",
    report_tool_errors: bool = False,
    **options: Any,
) -> AgentResult:
    """Let the model call `tools` until it answers; at most `max_steps` steps (model + tool calls).

    A tool whose input fails its schema is reported back to the model as an error,
    so it can correct itself; other tool failures end the loop by raising StepFailed
    unless `report_tool_errors` is set. Further options go to llm.chat (model, temperature...).
    """
    conversation = [llm.system(system), *messages]
    if user is not None:
        conversation.append(llm.user(user))
    tool_specs = _specs(tools)
    model_calls = tool_calls = 0
    answer: str | None = None
    while model_calls + tool_calls < max_steps:
        reply = llm.chat(ctx, conversation, tools=tool_specs, label=label, **options)
        model_calls += 1
        conversation.append(llm.assistant_message(reply))
        answer = reply.get("content")
        if not reply["tool_calls"]:
            return _result(answer, "final", model_calls, tool_calls, conversation)
        for call in reply["tool_calls"]:
            if call["name"] not in toolbox.REGISTRY:
                result: Any = {"error": f"there is no tool named {call['name']!r}"}
            elif model_calls + tool_calls >= max_steps:
                result = {"error": "step budget exhausted before this tool call"}
            else:
                tool_calls += 1
                result = _call_tool(ctx, call, report_tool_errors)
            conversation.append(llm.tool_result(call["id"], call["name"], result))
    return _result(answer, "budget", model_calls, tool_calls, conversation)


def _specs(names: Sequence[str]) -> list[llm.ToolSpec]:
    return toolbox.specs(names)


def _call_tool(ctx, call: dict, report_errors: bool) -> Any:
    try:
        return toolbox.call(ctx, call["name"], call["arguments"], call_id=call["id"])
    except StepFailed as failure:
        if report_errors or failure.error_type == toolbox.ToolInputError.__qualname__:
            return {"error": f"{failure.error_type}: {failure.error_message}"}
        raise


def _result(answer, stopped, model_calls, tool_calls, conversation) -> AgentResult:
    return {
        "answer": answer,
        "stopped": stopped,
        "model_calls": model_calls,
        "tool_calls": tool_calls,
        "messages": conversation,
    }
