"""`async def` workflows and steps for the tests, in-process and in real worker processes.

They count calls in tests.workflows.CALLS (in-process) or write ledger rows (workers),
as the sync test workflows do.
"""

import asyncio
import os
import threading

from asgiref.sync import sync_to_async

from runs.workflow import RetryPolicy, StepFailed, call, current_step, step, workflow
from tests.workflows import PAYMENTS, TOGGLES, SimulatedCrash, add, called, ledger_count, ledger_write

# Where each async step ran: (thread name, whether an event loop was running there).
WHERE: list[tuple[str, bool]] = []


def _note_where() -> None:
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    WHERE.append((threading.current_thread().name, running))


@step
async def async_add(a, b):
    called("async_add")
    _note_where()
    await asyncio.sleep(0)
    return a + b


@step
async def async_double(x):
    called("async_double")
    await asyncio.sleep(0)
    current_step().meta.update(model="fake-async", doubled=x)  # saved on the checkpoint
    if TOGGLES.pop("crash", False):
        raise SimulatedCrash("power cut inside an async step")
    return x * 2


@workflow("async_arithmetic")
async def async_arithmetic(ctx, data):
    total = await ctx.step(async_add, data["a"], data["b"])
    doubled = await ctx.step(async_double, total)
    bumped = await ctx.step(add, doubled, 1)  # a sync step in an async workflow
    return {"total": total, "doubled": doubled, "bumped": bumped}


@workflow("sync_calls_async")
def sync_calls_async(ctx, data):
    """A sync workflow calling an async step: it runs on the loop, the workflow waits."""
    return ctx.step(async_add, data["a"], data["b"])


@step(retry=RetryPolicy(max_attempts=4, initial_interval=2, backoff_coefficient=2, jitter=0))
async def async_charge(cents):
    called("async_charge")
    await asyncio.sleep(0)
    return PAYMENTS.charge(cents, current_step().idempotency_key)


@workflow("async_payment")
async def async_payment(ctx, data):
    return {"receipt": await ctx.step(async_charge, data["cents"])}


@step(retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0))
async def async_refuse(reason):
    called("async_refuse")
    raise PermissionError(reason)


@workflow("async_refusal")
async def async_refusal(ctx, data):
    try:
        await ctx.step(async_refuse, "account locked")
    except StepFailed as failure:
        return {"caught": failure.error_type, "fallback": await ctx.step(async_add, 1, 1)}


CANCELLED: list[str] = []


@step(timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0))
async def async_slow(swallow: bool):
    called("async_slow")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED.append(current_step().idempotency_key)
        if not swallow:
            raise
        await asyncio.sleep(0.3)  # past its time anyway: the deadline is checked on return
        return "swallowed"
    return "too late"


@workflow("async_timeout")
async def async_timeout(ctx, data):
    return await ctx.step(async_slow, data.get("swallow", False))


@step(retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0))
async def async_nap(seconds: float):
    """No timeout of its own: only DURABLE_MAX_STEP_SECONDS limits it."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED.append(current_step().idempotency_key)
        raise
    return "woke"


@workflow("async_napper")
async def async_napper(ctx, data):
    return await ctx.step(async_nap, data["seconds"])


RELEASE = threading.Event()
RELEASED: list[str] = []


@step(timeout=0.2, retry=RetryPolicy(max_attempts=1))
async def async_blocker():
    """Blocks the event loop itself (a blocking call without await) until the test releases it."""
    RELEASE.wait(30)
    RELEASED.append(current_step().idempotency_key)
    return "released"


@workflow("async_blocker")
async def async_blocker_workflow(ctx, data):
    return await ctx.step(async_blocker)


@step(retry=RetryPolicy(max_attempts=1))
async def async_own_timeout_error():
    raise TimeoutError("the provider's own timeout, not the step's")


@workflow("async_own_timeout_error")
async def async_own_timeout_error_workflow(ctx, data):
    return await ctx.step(async_own_timeout_error)


@workflow("async_sleeper")
async def async_sleeper(ctx, data):
    before = await ctx.step(async_add, 0, 1)
    await ctx.sleep(data.get("seconds", 7 * 24 * 3600))
    return await ctx.step(async_add, before, 1)


@workflow("async_approval")
async def async_approval(ctx, data):
    plan = await ctx.step(async_add, 40, 2)
    decision = await ctx.wait_for_signal("approve", timeout=data.get("timeout"), default={"approved": False})
    return {"plan": plan, "approved": decision.get("approved")}


@step
async def async_square(x):
    called("async_square")
    await asyncio.sleep(0)
    return x * x


@workflow("async_fan_out")
async def async_fan_out(ctx, data):
    squares = await ctx.map(async_square, data["items"])
    mixed = await ctx.parallel([call(add, 1, 2), call(async_square, 3)])
    return {"squares": squares, "mixed": mixed}


@workflow("async_patched")
async def async_patched(ctx, data):
    first = await ctx.step(async_add, 1, 1)
    if ctx.patched("extra"):
        first = await ctx.step(async_add, first, 10)
    return first


@workflow("async_awaits_a_timer")
async def async_awaits_a_timer(ctx, data):
    await ctx.step(async_add, 1, 1)
    await asyncio.sleep(0.01)  # not durable: refused
    return "unreachable"


@workflow("async_gathers")
async def async_gathers(ctx, data):
    return await asyncio.gather(ctx.step(async_add, 1, 1), ctx.step(async_add, 2, 2))  # refused


async def _helper(ctx, n):
    return await ctx.step(async_add, n, n)


@workflow("async_nested")
async def async_nested(ctx, data):
    """Durable calls awaited inside helper coroutines, and a sync helper given ctx.sync."""
    first = await _helper(ctx, 2)
    second = ctx.sync.step(add, first, 1)
    return [first, second]


# --- for real worker processes: side effects in the ledger table -----------------------


@step
async def async_ledger_step(index: int, pause: float):
    info = current_step()
    first_time = await sync_to_async(ledger_count)(info.run_id, f"step-{index}") == 0
    await sync_to_async(ledger_write)(info.run_id, f"step-{index}")
    if first_time:  # pause only the first execution, so a killed step re-runs quickly
        await asyncio.sleep(pause)
    return {"index": index, "pid": os.getpid()}


@workflow("async_ledger")
async def async_ledger(ctx, data):
    """One ledger row per step; step `slow_index` pauses so a test can kill the worker."""
    done = []
    for index in range(data["steps"]):
        pause = data.get("pause", 0.0) if index == data.get("slow_index") else 0.0
        result = await ctx.step(async_ledger_step, index, pause)
        done.append(result["index"])
    return {"done": done}
