"""Workflows the chaos run and the benchmarks start (DURABLE_WORKFLOW_MODULES=harness.workflows)."""

from __future__ import annotations

import os
import time

from django.db import IntegrityError, transaction

from harness.models import Call, SideEffect
from runs.workflow import RetryPolicy, current_step, step, workflow


def log_call(info) -> None:
    """Record that a step called the external system (when, from which process)."""
    Call.objects.create(
        idempotency_key=info.idempotency_key,
        run_id=info.run_id,
        position=info.position,
        attempt=info.attempt,
        started_at=time.time(),
        pid=os.getpid(),
    )


@step
def noop() -> None:
    return None


@workflow("bench_noop")
def bench_noop(ctx, data):
    for _ in range(data["steps"]):
        ctx.step(noop)
    return data["steps"]


@step(retry=RetryPolicy(max_attempts=6, initial_interval=0.2, backoff_coefficient=1.5, jitter=0.2))
def effect(index: int, seed: int, pause: float, flaky: bool) -> dict:
    """Calls an 'external system' that applies each idempotency key once.

    Every call is logged (retries and crash re-executions included); the effect is
    applied at most once per key, as a payment provider would.
    """
    info = current_step()
    log_call(info)
    if pause:
        time.sleep(pause)
    if flaky and info.attempt == 1:
        raise ConnectionError("the external system did not answer (transient)")
    value = (seed * 31 + index * 7) % 1000
    try:
        with transaction.atomic():
            SideEffect.objects.create(
                idempotency_key=info.idempotency_key, run_id=info.run_id, position=info.position, value=value
            )
    except IntegrityError:
        pass  # already applied under this key: the provider answers with the same result
    return {"index": index, "value": value}


@workflow("chaos")
def chaos(ctx, data):
    """Several effects (some flaky, some slow), a wait for a signal, then more effects."""
    seed, steps = data["seed"], data["steps"]
    values = []
    for index in range(steps):
        result = ctx.step(effect, index, seed, data["pause"] if index % 3 == 1 else 0.0, index % 4 == 2)
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
