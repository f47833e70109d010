"""OpenAI Agents SDK agents and workflows for the tests, in-process and in real worker subprocesses.

The scripted model implements the SDK's Model interface; it and the tools append a line to the
file named by OAI_LEDGER for every model call and tool call they really make, so a test can
count them even when a worker process made them. Nothing here touches the network.
"""

from __future__ import annotations

import os
import threading

from agents import Agent, ModelResponse, RunConfig, Usage, function_tool
from agents.models.interface import Model
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from agentkit import faults
from agentkit.integrations.openai_agents import DurableRunner, ToolOptions
from runs.workflow import RetryPolicy, workflow

# Tools that should fail (add) or stall (multiply) before they succeed: name -> how many more times.
TROUBLE: dict[str, int] = {}
STALL_SECONDS = 3.0
_lock = threading.Lock()


def note(what: str) -> None:
    path = os.environ.get("OAI_LEDGER")
    if path:
        with _lock, open(path, "a") as ledger:
            ledger.write(what + "\n")


def ledger() -> list[str]:
    path = os.environ.get("OAI_LEDGER")
    if not path or not os.path.exists(path):
        return []
    with open(path) as lines:
        return lines.read().splitlines()


def _outputs(input) -> list[str]:
    if isinstance(input, str):
        return []
    return [
        item["output"]
        for item in input
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


def _call(name: str, arguments: str, call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(type="function_call", name=name, arguments=arguments, call_id=call_id)


def _text(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg-1",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


class ArithmeticModel(Model):
    """Adds, then multiplies the sum, then answers: three model calls, two tool calls."""

    model = "arithmetic-model"

    async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
        done = _outputs(input)
        note(f"model:{len(done)}")
        if not done:
            item = _call("add", '{"a": 2, "b": 3}', "call-add")
        elif len(done) == 1:
            item = _call("multiply", f'{{"a": {done[0]}, "b": 7}}', "call-mul")
        else:
            item = _text(f"The answer is {done[-1]}.")
        usage = Usage(requests=1, input_tokens=100, output_tokens=10, total_tokens=110)
        return ModelResponse(output=[item], usage=usage, response_id=f"resp-{len(done)}")

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    note("tool:add")
    _maybe_trouble("add")
    return a + b


@function_tool
def multiply(a: int, b: int) -> int:
    """Multiply two numbers."""
    note("tool:multiply")
    _maybe_trouble("multiply")
    return a * b


def _maybe_trouble(name: str) -> None:
    with _lock:
        left = TROUBLE.get(name, 0)
        TROUBLE[name] = max(left - 1, 0)
    if left and name == "multiply":
        threading.Event().wait(STALL_SECONDS)  # past its timeout
    elif left:
        raise ConnectionError(f"{name} is unreachable")


calculator = Agent(
    name="calculator",
    instructions="Do the sums with your tools.",
    model=ArithmeticModel(),
    tools=[add, multiply],
)

quick_retries = RetryPolicy(max_attempts=3, initial_interval=0, jitter=0)
runner = DurableRunner(
    tools={"add": ToolOptions(quick_retries), "multiply": ToolOptions(quick_retries, timeout=1)}
)


@workflow("oai_calculator")
def oai_calculator(ctx, data):
    result = runner.run(ctx, calculator, data.get("question", "What is (2 + 3) * 7?"))
    return {"answer": result.final_output, "items": len(result.new_items)}


faults.FAULTABLE.add("oai_calculator")


# The same agent with a model name only: the run_config's model is the one that answers.
named_calculator = calculator.clone(name="named", model="no-such-model")


@workflow("oai_run_config_model")
def oai_run_config_model(ctx, data):
    config = RunConfig(model=ArithmeticModel(), tracing_disabled=True)
    result = runner.run(ctx, named_calculator, "What is (2 + 3) * 7?", run_config=config)
    return {"answer": result.final_output}
