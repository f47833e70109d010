"""Workflows the chaos run and the benchmarks start (DURABLE_WORKFLOW_MODULES=harness.workflows)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import nullcontext

from django.db import IntegrityError, transaction

from agentkit import fake, tools
from agentkit.loop import run_agent
from harness.models import Call, SideEffect
from runs.workflow import RetryPolicy, current_step, step, workflow


def log_call(info) -> None:
    """Record that a step called the external system (which step, when, from which process)."""
    Call.objects.create(
        idempotency_key=info.idempotency_key,
        run_id=info.run_id,
        position=info.position,
        attempt=info.attempt,
        step=info.name,
        started_at=time.time(),
        pid=os.getpid(),
    )


def apply_once(info, value: int) -> int:
    """The external system applies each idempotency key once, as a payment provider would."""
    try:
        with transaction.atomic():
            SideEffect.objects.create(
                idempotency_key=info.idempotency_key, run_id=info.run_id, position=info.position, value=value
            )
    except IntegrityError:
        pass  # already applied under this key: the provider answers with the same result
    return value


_sum_rate: list[float] = []  # how many numbers sum(range()) adds per second here, measured once


def hold_gil(seconds: float) -> float:
    """Spin for at least about `seconds` in one C call; return how long it took.

    sum() over a range runs entirely in C and never gives the GIL up: no other thread
    of the process (the heartbeat thread included) runs until it returns. The rate is
    measured in CPU time, which other processes competing for the machine do not
    shorten: on a busy machine the spin lasts longer, not shorter.
    """
    if not _sum_rate:
        sample = 5_000_000
        best = min(_cpu_time(sum, range(sample)) for _ in range(3))
        _sum_rate.append(sample / best)
    began = time.monotonic()
    sum(range(int(seconds * _sum_rate[0])))
    return time.monotonic() - began


def _cpu_time(fn, *args) -> float:
    began = time.thread_time()
    fn(*args)
    return time.thread_time() - began


class ThreadProbe:
    """A thread ticking every few milliseconds; `longest_gap` is how long it could not run."""

    def __enter__(self) -> ThreadProbe:
        self.longest_gap = 0.0
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="gil-probe")
        self._thread.start()
        time.sleep(0.01)
        return self

    def _tick(self) -> None:
        while True:
            now = time.monotonic()  # measured before looking at _done: the last gap counts too
            self.longest_gap = max(self.longest_gap, now - self._last)
            self._last = now
            if self._done.is_set():
                return
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@step
def noop() -> None:
    return None


@workflow("bench_noop")
def bench_noop(ctx, data):
    for _ in range(data["steps"]):
        ctx.step(noop)
    return data["steps"]


@step
async def async_noop() -> None:
    return None


@workflow("bench_async_noop")
async def bench_async_noop(ctx, data):
    """bench_noop with async steps in an async workflow."""
    for _ in range(data["steps"]):
        await ctx.step(async_noop)
    return data["steps"]


@step
def wait_for_io(pause: float) -> None:
    """A step that waits, as a model call or an HTTP request does."""
    time.sleep(pause)


@workflow("bench_io")
def bench_io(ctx, data):
    for _ in range(data["steps"]):
        ctx.step(wait_for_io, data["pause"])
    return data["steps"]


RETRY = RetryPolicy(max_attempts=6, initial_interval=0.2, backoff_coefficient=1.5, jitter=0.2)


@step(retry=RETRY)
def effect(index: int, seed: int, flaky: bool) -> dict:
    """Calls an 'external system' that applies each idempotency key once.

    Every call is logged (retries and crash re-executions included); the effect is
    applied at most once per key.
    """
    info = current_step()
    log_call(info)
    if flaky and info.attempt == 1:
        raise ConnectionError("the external system did not answer (transient)")
    return {"index": index, "value": apply_once(info, (seed * 31 + index * 7) % 1000)}


@step(retry=RETRY)
def slow_effect(index: int, seed: int, pause: float, hold_transaction: bool) -> dict:
    """Applies its effect, then works for `pause` seconds before committing.

    With hold_transaction the effect and the work share one transaction, so a worker
    frozen here holds it open (and the effect's key locked) while it is frozen. The
    chaos run freezes workers inside this step; SQLite, which would stop every other
    writer meanwhile, does the work outside the transaction.
    """
    info = current_step()
    log_call(info)
    value = (seed * 31 + index * 7) % 1000
    with transaction.atomic() if hold_transaction else nullcontext():
        apply_once(info, value)
        time.sleep(pause)
    return {"index": index, "value": value}


@step
def burn(seed: int, seconds: float) -> dict:
    """A CPU-bound step holding the GIL for `seconds`, then applying its effect once.

    What the GIL was held for (the probe thread's longest wait) goes on its checkpoint.
    """
    info = current_step()
    log_call(info)
    with ThreadProbe() as probe:
        spent = hold_gil(seconds)
    info.meta.update(gil_held=round(probe.longest_gap, 3), burn_seconds=round(spent, 3))
    return {"value": apply_once(info, (seed * 17 + 5) % 1000)}


@workflow("chaos")
def chaos(ctx, data):
    """Several effects (some flaky, some slow), a wait for a signal, then more effects.

    With data["burn"], a CPU-bound step comes first; its value stays out of the output,
    which is compared with runs that do not burn.
    """
    seed, steps = data["seed"], data["steps"]
    if data.get("burn"):
        ctx.step(burn, seed, data["burn"])
    values = []
    for index in range(steps):
        if index % 3 == 1:
            result = ctx.step(slow_effect, index, seed, data["pause"], data.get("hold_transaction", False))
        else:
            result = ctx.step(effect, index, seed, index % 4 == 2)
        values.append(result["value"])
        if index == steps // 2:
            go = ctx.wait_for_signal("go")
            values.append(go["bonus"])
    return {"seed": seed, "values": values, "total": sum(values)}


@step
def sleepy(pause: float) -> int:
    """Logs its call, and sleeps on its first execution only, so a kill lands mid-step."""
    info = current_step()
    first = not Call.objects.filter(idempotency_key=info.idempotency_key).exists()
    log_call(info)
    if first:
        time.sleep(pause)
    return os.getpid()


@workflow("bench_sleepy")
def bench_sleepy(ctx, data):
    return ctx.step(sleepy, data["pause"])


# --- an agent loop on the fake model, for the storage figure ---------------------------

AGENT_LOOP_PROMPT = "Bench agent loop: call tally once per turn until the count is reached."
TALLY_NOTE = "a tool result of a steady size, as a search hit or a document excerpt would be " * 3


@tools.tool(
    name="bench_tally",
    schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
)
def bench_tally(n: int) -> dict:
    """Count one more."""
    return {"n": n, "note": TALLY_NOTE}


@fake.responder(AGENT_LOOP_PROMPT)
def _agent_loop_reply(request) -> dict | str:
    # The user message says how many model calls to make: a tool call each, then an answer.
    messages = request["messages"]
    wanted = int(next(m["content"] for m in messages if m["role"] == "user"))
    done = sum(1 for m in messages if m["role"] == "tool")
    if done + 1 < wanted:
        return {
            "content": f"Tally {done} so far; one more.",
            "tool_calls": [{"name": "bench_tally", "arguments": {"n": done}}],
        }
    return f"Counted to {done}."


@workflow("bench_agent_loop")
def bench_agent_loop(ctx, data):
    """`calls` model calls with a tool call between each two: 2 * calls - 1 steps."""
    calls = data["calls"]
    result = run_agent(
        ctx,
        system=AGENT_LOOP_PROMPT,
        user=str(calls),
        tools=["bench_tally"],
        max_steps=2 * calls,
        label="loop",
    )
    output = {"answer": result["answer"], "model_calls": result["model_calls"]}
    if data.get("messages"):
        output["messages"] = result["messages"]
    return output
