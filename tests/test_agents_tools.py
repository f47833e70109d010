"""Tools as steps with JSON-schema'd input, and the durable agent loop."""

import pytest

from agentkit import fake, llm, tools
from agentkit.loop import run_agent
from agentkit.models import ProviderCall
from runs.models import Run, Status
from runs.workflow import RetryPolicy, workflow
from steps.models import Attempt, Checkpoint

pytestmark = pytest.mark.django_db(transaction=True)

seen_keys: list[str] = []
PROMPT = "You are a calculator agent for the tool tests."


@tools.tool(
    schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0),
)
def agents_test_add(a: int, b: int) -> int:
    """Add two whole numbers."""
    seen_keys.append(tools.idempotency_key())
    return a + b


@workflow("agents_test_tool")
def tool_workflow(ctx, data):
    return tools.call(ctx, "agents_test_add", data)


@workflow("agents_test_agent")
def agent_workflow(ctx, data):
    result = run_agent(
        ctx, system=PROMPT, user=data["task"], tools=["agents_test_add"], max_steps=data.get("max_steps", 30)
    )
    return {key: result[key] for key in ("answer", "stopped", "model_calls", "tool_calls")}


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    fake.reset()
    seen_keys.clear()
    yield
    fake.reset()


def add_call(a, b):
    return {"name": "agents_test_add", "arguments": {"a": a, "b": b}}


def test_it_runs_a_tool_as_a_step_with_its_idempotency_key(doorbells):
    run = Run.objects.start("agents_test_tool", {"a": 2, "b": 3})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == 5
    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.name == "tool:agents_test_add"
    assert checkpoint.meta == {
        "kind": "tool",
        "tool": "agents_test_add",
        "arguments": {"a": 2, "b": 3},
        "call_id": "",
    }
    assert seen_keys == [run.step_idempotency_key(0)]


def test_it_fails_the_step_at_once_on_input_that_breaks_the_schema(doorbells):
    run = Run.objects.start("agents_test_tool", {"a": 2, "b": "three", "c": 1})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "ToolInputError"
    assert "b: 'three' is not of type 'integer'" in run.error_message
    assert "Additional properties are not allowed" in run.error_message
    assert Attempt.objects.filter(run=run).count() == 1
    assert seen_keys == []


def test_it_describes_tools_to_the_model():
    assert tools.specs(["agents_test_add"]) == [
        {
            "name": "agents_test_add",
            "description": "Add two whole numbers.",
            "parameters": tools.get("agents_test_add").schema,
        }
    ]
    with pytest.raises(tools.UnknownTool, match="no tool named 'nope'"):
        tools.specs(["nope"])


def test_it_refuses_a_schema_that_is_not_an_object_or_not_a_schema():
    with pytest.raises(ValueError, match="must describe an object"):
        tools.tool(schema={"type": "string"})
    with pytest.raises(Exception, match="is not valid"):
        tools.tool(schema={"type": "object", "properties": {"a": {"type": "no-such-type"}}})


def script_agent(task, *turns):
    """Script the model: each turn is a reply to the conversation built so far."""
    conversation = [llm.system(PROMPT), llm.user(task)]
    for index, turn in enumerate(turns):
        fake.script(conversation, turn)
        if isinstance(turn, str):
            break
        calls = [{"id": f"call_{len(conversation)}_{i}", **call} for i, call in enumerate(turn["tool_calls"])]
        conversation = [
            *conversation,
            {"role": "assistant", "content": turn.get("content"), "tool_calls": calls},
        ]
        for call, result in zip(calls, turn["results"], strict=True):
            conversation.append(llm.tool_result(call["id"], call["name"], result))
        del turn["results"]
        assert index < 20


def test_it_loops_model_and_tool_calls_each_as_its_own_step(doorbells):
    script_agent(
        "What is (1+2)+(3+4)?",
        {"tool_calls": [add_call(1, 2), add_call(3, 4)], "results": [3, 7]},
        {"tool_calls": [add_call(3, 7)], "results": [10]},
        "The answer is 10.",
    )
    run = Run.objects.start("agents_test_agent", {"task": "What is (1+2)+(3+4)?"})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == {
        "answer": "The answer is 10.",
        "stopped": "final",
        "model_calls": 3,
        "tool_calls": 3,
    }
    assert [c.name for c in run.live_checkpoints()] == [
        "llm",
        "tool:agents_test_add",
        "tool:agents_test_add",
        "llm",
        "tool:agents_test_add",
        "llm",
    ]
    tool_steps = Checkpoint.objects.filter(run=run, name="tool:agents_test_add")
    assert [c.meta["call_id"] for c in tool_steps] == ["call_2_0", "call_2_1", "call_5_0"]
    assert len(set(seen_keys)) == 3
    assert ProviderCall.objects.filter(run=run).count() == 3


def test_it_reports_invalid_tool_input_to_the_model_so_it_can_correct_itself(doorbells):
    error = "ToolInputError: invalid input for tool 'agents_test_add': b: 'two' is not of type 'integer'"
    script_agent(
        "1 plus two?",
        {
            "tool_calls": [{"name": "agents_test_add", "arguments": {"a": 1, "b": "two"}}],
            "results": [{"error": error}],
        },
        {"tool_calls": [add_call(1, 2)], "results": [3]},
        "3",
    )
    run = Run.objects.start("agents_test_agent", {"task": "1 plus two?"})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["answer"] == "3"
    assert run.output["tool_calls"] == 2


def test_it_stops_at_the_step_budget(doorbells):
    # The model never stops asking: an unscripted conversation echoes, so script a loop by hand.
    script_agent(
        "loop",
        {"tool_calls": [add_call(1, 1)], "results": [2]},
        {"tool_calls": [add_call(2, 2)], "results": [4]},
        {"tool_calls": [add_call(4, 4)], "results": [8]},
    )
    run = Run.objects.start("agents_test_agent", {"task": "loop", "max_steps": 4})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["stopped"] == "budget"
    assert (run.output["model_calls"], run.output["tool_calls"]) == (2, 2)
    assert run.steps_done == 4


def test_it_tells_the_model_about_a_tool_that_does_not_exist(doorbells):
    script_agent(
        "use a ghost tool",
        {
            "tool_calls": [{"name": "ghost", "arguments": {}}],
            "results": [{"error": "there is no tool named 'ghost'"}],
        },
        "Sorry, I cannot.",
    )
    run = Run.objects.start("agents_test_agent", {"task": "use a ghost tool"})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output["answer"] == "Sorry, I cannot."
    assert run.output["tool_calls"] == 0
