"""Linear storage of agent conversations: each model call keeps its new messages only,
replay and the run page rebuild the rest, and checkpoints of the old format still work."""

import itertools
import json

import pytest
from django.urls import reverse

from agentkit import accounting, fake, history, llm, tools
from agentkit.loop import run_agent
from agentkit.models import ProviderCall
from harness import workflows as bench_workflows  # registers bench_agent_loop and its tool
from runs import stepinputs
from runs.models import Run, Status
from runs.recovery import sweep
from runs.replaycheck import check_runs
from runs.workflow import workflow
from steps.models import Checkpoint
from tests.conftest import lapse_leases
from tests.factories import make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

CRASH = {}


class PowerCut(BaseException):
    """Escapes everything, like the worker process dying."""


@tools.tool(
    name="history_test_tally",
    schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
)
def history_test_tally(n: int) -> dict:
    """Count one more."""
    if CRASH.get("at") == n:
        CRASH.pop("at")
        raise PowerCut(f"the worker died in tool call {n}")
    return {"n": n}


@fake.responder("History test agent.")
def _history_reply(request):
    done = sum(1 for m in request["messages"] if m["role"] == "tool")
    if done < 5:
        return {"content": None, "tool_calls": [{"name": "history_test_tally", "arguments": {"n": done}}]}
    return f"Counted to {done}."


@workflow("history_test_agent")
def history_test_agent(ctx, data):
    result = run_agent(ctx, system="History test agent.", user=data["question"], tools=["history_test_tally"])
    # A second conversation in the same run: it extends none, and the loop's calls stay linked.
    verdict = llm.chat(ctx, [llm.system("Judge."), llm.user(result["answer"])], label="judge")
    return {"messages": result["messages"], "verdict": verdict["content"]}


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_FAKE_LATENCY = 0
    fake.reset()
    CRASH.clear()


def model_steps(run, name="llm:loop"):
    return list(Checkpoint.objects.filter(run=run, name=name).order_by("position"))


def stored_bytes(checkpoint) -> int:
    """What a checkpoint keeps of a model call: its input, its output and its meta, as JSON."""
    return sum(len(json.dumps(value)) for value in (checkpoint.input, checkpoint.output, checkpoint.meta))


def whole_conversation(checkpoint) -> list[dict]:
    rebuilt = history.rebuild(checkpoint.meta["request"], history.earlier_than(checkpoint), limit=10_000)
    assert not rebuilt.missing and rebuilt.omitted == 0
    return rebuilt.messages


def test_a_200_call_loop_stores_a_flat_number_of_bytes_per_call(doorbells):
    run = Run.objects.start("bench_agent_loop", {"calls": 200})
    assert doorbells.drain() == ["succeeded"]

    calls = model_steps(run)
    assert len(calls) == 200 == Run.objects.get(pk=run.pk).output["model_calls"]
    sizes = [stored_bytes(checkpoint) for checkpoint in calls]
    first, last = sum(sizes[:50]) / 50, sum(sizes[-50:]) / 50
    assert last <= 1.2 * first, (first, last)
    # Flat because each call keeps what is new in it, not because anything was lost:
    # the last call's 400 messages are all there to read back.
    conversation = whole_conversation(calls[-1])
    assert len(conversation) == 2 + 2 * 199
    assert conversation[0] == llm.system(bench_workflows.AGENT_LOOP_PROMPT)
    assert [m["role"] for m in conversation[-2:]] == ["assistant", "tool"]
    assert len(calls[-1].meta["request"]["messages"]) == 2
    assert len(calls[-1].input["args"][0]["messages"]) == 2


def test_each_call_references_the_one_it_extends(doorbells):
    run = Run.objects.start("history_test_agent", {"question": "Count."})
    assert doorbells.drain() == ["succeeded"]
    output = Run.objects.get(pk=run.pk).output

    loop = model_steps(run, "llm")
    assert len(loop) == 6
    assert "history" not in loop[0].meta["request"]
    for earlier, later in itertools.pairwise(loop):
        assert later.meta["request"]["history"] == {
            "position": earlier.position,
            "messages": len(earlier.meta["request"]["messages"])
            + (earlier.meta["request"].get("history") or {}).get("messages", 0),
        }
        assert later.input["args"][0]["history"] == later.meta["request"]["history"]
    for index, checkpoint in enumerate(loop):
        assert whole_conversation(checkpoint) == output["messages"][: 2 + 2 * index]
    (judge,) = model_steps(run, "llm:judge")
    assert "history" not in judge.meta["request"]


def crash_and_recover(doorbells, run) -> None:
    with pytest.raises(PowerCut):
        doorbells.drain()
    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]


def test_replay_after_a_crash_rebuilds_the_same_conversation_without_calling_the_model(doorbells):
    calm = Run.objects.start("history_test_agent", {"question": "Count."})
    assert doorbells.drain() == ["succeeded"]
    calm_calls = ProviderCall.objects.filter(run=calm).count()

    CRASH["at"] = 3  # dies in the fourth tool call, after four model calls
    run = Run.objects.start("history_test_agent", {"question": "Count."})
    crash_and_recover(doorbells, run)

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.recovery_count == 1
    # The four answered calls were replayed from their checkpoints, not asked again.
    assert ProviderCall.objects.filter(run=run).count() == calm_calls == 7
    assert run.output == Run.objects.get(pk=calm.pk).output
    # The calls made after the crash reference the ones recorded before it.
    loop = model_steps(run, "llm")
    assert loop[4].meta["request"]["history"]["position"] == loop[3].position
    assert [whole_conversation(c) for c in loop] == [whole_conversation(c) for c in model_steps(calm, "llm")]


def to_old_format(checkpoint) -> None:
    """What this call's checkpoint held before linear storage: its whole conversation."""
    messages = whole_conversation(checkpoint)
    request = {key: value for key, value in checkpoint.input["args"][0].items() if key != "history"}
    checkpoint.input = stepinputs.record([{**request, "messages": messages}], {})
    meta_request = {key: value for key, value in checkpoint.meta["request"].items() if key != "history"}
    checkpoint.meta = {**checkpoint.meta, "request": {**meta_request, "messages": messages}}
    checkpoint.save(update_fields=["input", "meta"])


def test_a_run_recorded_in_the_old_format_replays_and_its_page_shows_every_conversation(doorbells, client):
    calm = Run.objects.start("history_test_agent", {"question": "Count."})
    assert doorbells.drain() == ["succeeded"]

    CRASH["at"] = 3
    run = Run.objects.start("history_test_agent", {"question": "Count."})
    with pytest.raises(PowerCut):
        doorbells.drain()
    recorded = model_steps(run, "llm")
    assert len(recorded) == 4
    for checkpoint in reversed(recorded):  # the latest first: each rebuilds from the earlier ones
        to_old_format(checkpoint)
    assert all("history" not in c.meta["request"] for c in model_steps(run, "llm"))
    # The pre-deploy check knows the calls recorded whole for the same calls as before.
    assert check_runs(run_ids=[run.pk]).ok

    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert ProviderCall.objects.filter(run=run).count() == 7  # four before the crash, three after
    assert run.output == Run.objects.get(pk=calm.pk).output
    loop = model_steps(run, "llm")
    # The first call after the crash references an old-format one, whose whole conversation ends the chain.
    assert loop[4].meta["request"]["history"]["position"] == loop[3].position
    for index, checkpoint in enumerate(loop):
        assert whole_conversation(checkpoint) == run.output["messages"][: 2 + 2 * index]

    client.force_login(make_viewer())
    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    for index in range(6):  # sent 2 + 2 * index, plus the reply
        assert f"conversation: {3 + 2 * index} messages" in page
    step = client.get(reverse("run_step", args=[run.pk, loop[5].position]), HTTP_HX_REQUEST="true")
    assert "conversation: 13 messages" in step.content.decode()
    old = client.get(reverse("checkpoint_detail", args=[run.pk, loop[3].pk])).content.decode()
    assert "conversation: 9 messages" in old


def test_the_page_shows_the_last_messages_of_a_long_conversation_and_counts_the_rest(doorbells, client):
    run = Run.objects.start("bench_agent_loop", {"calls": 60})
    assert doorbells.drain() == ["succeeded"]
    last = model_steps(run)[-1]

    shown = accounting.llm_step(last.meta, history.earlier_than(last))
    sent = 2 + 2 * 59
    assert shown["messages"] == sent + 1
    assert len(shown["conversation"]) == accounting.CONVERSATION_SHOWN
    assert shown["earlier_not_shown"] == sent + 1 - accounting.CONVERSATION_SHOWN
    assert shown["conversation"][-1]["is_reply"]

    client.force_login(make_viewer())
    url = reverse("run_step", args=[run.pk, last.position])
    fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert f"conversation: {sent + 1} messages" in fragment
    assert f"{sent + 1 - accounting.CONVERSATION_SHOWN} earlier messages not shown" in fragment


def test_a_gone_checkpoint_shows_as_missing_messages_not_an_error(doorbells):
    run = Run.objects.start("bench_agent_loop", {"calls": 3})
    assert doorbells.drain() == ["succeeded"]
    _, second, third = model_steps(run)
    second.delete()

    shown = accounting.llm_step(third.meta, history.earlier_than(third))
    assert shown["messages"] == 7
    assert shown["earlier_missing"] and shown["earlier_not_shown"] == 4
    assert [turn["role"] for turn in shown["conversation"]] == ["assistant", "tool", "assistant"]


def test_continuation_finds_the_longest_earlier_conversation_extended():
    ctx = object.__new__(type("Ctx", (), {}))
    a = [llm.system("s"), llm.user("one")]
    b = [llm.system("other"), llm.user("two")]
    assert history.continuation(ctx, a) == (None, a)
    history.remember(ctx, 0, a)
    history.remember(ctx, 1, b)
    history.remember(ctx, 2, [*a, {"role": "assistant", "content": "x"}])
    extended = [*a, {"role": "assistant", "content": "x"}, llm.user("more")]
    assert history.continuation(ctx, extended) == ({"position": 2, "messages": 3}, [llm.user("more")])
    assert history.continuation(ctx, [*b, llm.user("three")]) == (
        {"position": 1, "messages": 2},
        [llm.user("three")],
    )
    # A changed earlier message is not an extension: the call keeps its whole conversation.
    changed = [llm.system("s"), llm.user("ONE"), llm.user("more")]
    assert history.continuation(ctx, changed) == (None, changed)
