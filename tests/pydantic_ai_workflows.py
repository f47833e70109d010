"""Pydantic AI agents and workflows for the tests, in-process and in real worker subprocesses.

The scripted model and the tools append a line to the file named by PYDAI_LEDGER for
every model request and tool call they really make, so a test can count them even when
a worker process made them.
"""

from __future__ import annotations

import os
import threading

from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentkit import faults
from agentkit.integrations.pydantic_ai import DurableAgent, ToolOptions
from runs.workflow import RetryPolicy, workflow

# Tools that should fail or stall before they succeed: name -> how many more times.
TROUBLE: dict[str, int] = {}
STALL_SECONDS = 3.0
_lock = threading.Lock()


def note(what: str) -> None:
    path = os.environ.get("PYDAI_LEDGER")
    if path:
        with _lock, open(path, "a") as ledger:
            ledger.write(what + "\n")


def ledger() -> list[str]:
    path = os.environ.get("PYDAI_LEDGER")
    if not path or not os.path.exists(path):
        return []
    with open(path) as lines:
        return lines.read().splitlines()


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [part for m in messages for part in m.parts if isinstance(part, ToolReturnPart)]


def arithmetic_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Adds, then multiplies the sum, then answers: three requests, two tool calls."""
    done = _returns(messages)
    note(f"model:{len(done)}")
    if not done:
        return ModelResponse(parts=[ToolCallPart("add", {"a": 2, "b": 3}, tool_call_id="call-add")])
    if len(done) == 1:
        total = done[0].content
        return ModelResponse(parts=[ToolCallPart("multiply", {"a": total, "b": 7}, tool_call_id="call-mul")])
    return ModelResponse(parts=[TextPart(f"The answer is {done[-1].content}.")])


calculator = Agent(
    FunctionModel(arithmetic_model), name="calculator", instructions="Do the sums with your tools."
)


@calculator.tool_plain
def add(a: int, b: int) -> int:
    """Add two numbers."""
    note("tool:add")
    _maybe_trouble("add")
    return a + b


@calculator.tool_plain
def multiply(a: int, b: int) -> int:
    """Multiply two numbers."""
    note("tool:multiply")
    _maybe_trouble("multiply")
    return a * b


class SimulatedCrash(BaseException):
    """Escapes everything, like the process dying mid-tool."""


def _maybe_trouble(name: str) -> None:
    with _lock:
        left = TROUBLE.get(name, 0)
        TROUBLE[name] = max(left - 1, 0)
        crash = TROUBLE.pop(f"{name}-crash", 0)
    if crash:
        raise SimulatedCrash("power cut")
    if left and name == "multiply":
        threading.Event().wait(STALL_SECONDS)  # past its timeout
    elif left:
        raise ConnectionError(f"{name} is unreachable")


durable_calculator = DurableAgent(
    calculator,
    tools={
        "add": ToolOptions(retry=RetryPolicy(max_attempts=3, initial_interval=0, jitter=0)),
        "multiply": ToolOptions(retry=RetryPolicy(max_attempts=3, initial_interval=0, jitter=0), timeout=1),
    },
)


@workflow("pydai_calculator")
def pydai_calculator(ctx, data):
    result = durable_calculator.run_sync(ctx, data.get("question", "What is (2 + 3) * 7?"))
    return {"answer": result.output, "messages": len(result.all_messages())}


faults.FAULTABLE.add("pydai_calculator")


# --- a tool that needs a person's approval -------------------------------------------


def transfer_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = _returns(messages)
    note(f"model:{len(done)}")
    if not done:
        return ModelResponse(parts=[ToolCallPart("transfer", {"cents": 5_000}, tool_call_id="call-transfer")])
    return ModelResponse(parts=[TextPart(f"Transfer: {done[0].content}")])


banker = Agent(FunctionModel(transfer_model), name="banker")


@banker.tool_plain(requires_approval=True)
def transfer(cents: int) -> str:
    """Move money."""
    note("tool:transfer")
    return f"sent {cents}"


durable_banker = DurableAgent(banker)


@workflow("pydai_banker")
def pydai_banker(ctx, data):
    return {"answer": durable_banker.run_sync(ctx, "Pay the invoice.").output}


# --- an async tool that blocks its event loop (a common mistake) --------------------------


def lookup_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = _returns(messages)
    note(f"model:{len(done)}")
    if not done:
        return ModelResponse(parts=[ToolCallPart("blocking_lookup", {}, tool_call_id="call-lookup")])
    return ModelResponse(parts=[TextPart(str(done[0].content))])


blocker = Agent(FunctionModel(lookup_model), name="blocker")


@blocker.tool_plain
async def blocking_lookup() -> str:
    """Looks something up, blocking the loop while it does."""
    note("tool:blocking_lookup")
    with _lock:
        stall = TROUBLE.pop("blocking_lookup", 0)
    if stall:
        threading.Event().wait(STALL_SECONDS)  # not awaited: nothing else on the loop runs meanwhile
    return "found it"


durable_blocker = DurableAgent(blocker, default_tool=ToolOptions(RetryPolicy(initial_interval=0), timeout=1))


@workflow("pydai_blocker")
def pydai_blocker(ctx, data):
    return {"answer": durable_blocker.run_sync(ctx, "Look it up.").output}


# --- a model that answers with HTTP errors ----------------------------------------------


def erring_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    with _lock:
        statuses = TROUBLE.setdefault("statuses", [])
        status = statuses.pop(0) if statuses else None
    if status:
        raise ModelHTTPError(status, "erring-model", {"error": f"HTTP {status}"})
    return ModelResponse(parts=[TextPart("fine")])


erring = Agent(FunctionModel(erring_model), name="erring")
durable_erring = DurableAgent(erring, model_retry=RetryPolicy(max_attempts=3, initial_interval=0, jitter=0))


@workflow("pydai_erring")
def pydai_erring(ctx, data):
    return {"answer": durable_erring.run_sync(ctx, "Hello?").output}
