"""`async def` workflows: the same durable calls, awaited.

An async workflow receives an AsyncContext around the same context a sync workflow gets
(the engine's RunContext, or runs.export's ReplayContext), and its coroutine is driven by
the thread executing the run: each `await ctx.step(...)` hands the durable call to that
thread, which makes it exactly as for a sync workflow (same positions, checkpoints,
replay, retries, suspensions) and sends the result back in. Workflow code therefore
runs where a sync workflow's would, with the run's database connection at hand, and a
suspension or a lost lease unwinds the coroutine with the same exception. An async step
itself runs on the process's event loop (steps.eventloop).

Workflow code may await only the context's durable calls (and coroutines that await
only those): anything else would make the run depend on timing that replay cannot
reproduce. Run steps at once with `await ctx.parallel(...)`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Coroutine, Generator
from typing import Any


class DurableCall:
    """What `ctx.step(...)` returns in an async workflow: the call, made once awaited."""

    __slots__ = ("_awaited", "_call")

    def __init__(self, call: Callable[[], Any]):
        self._call = call
        self._awaited = False

    def __del__(self) -> None:
        if not self._awaited:  # as Python warns of a coroutine never awaited
            message = "a durable call was made without `await`: it did nothing"
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def __await__(self) -> Generator[DurableCall, Any, Any]:
        if self._awaited:
            raise RuntimeError("a durable call can be awaited only once; call ctx.step() again")
        self._awaited = True
        return (yield self)


class AsyncContext:
    """What an async workflow function receives: the context's durable calls, awaitable.

    `ctx.patched()` and `ctx.deprecate_patch()` never wait, and stay plain calls.
    """

    def __init__(self, ctx):
        self.sync = ctx  # the context underneath, for helpers written for sync workflows

    def step(self, fn, *args, **kwargs) -> DurableCall:
        return DurableCall(functools.partial(self.sync.step, fn, *args, **kwargs))

    def sleep(self, duration) -> DurableCall:
        return DurableCall(functools.partial(self.sync.sleep, duration))

    def wait_for_signal(
        self, name: str, timeout=None, default: Any = None, *, prompt: str = ""
    ) -> DurableCall:
        return DurableCall(
            functools.partial(self.sync.wait_for_signal, name, timeout, default, prompt=prompt)
        )

    def parallel(self, calls) -> DurableCall:
        return DurableCall(functools.partial(self.sync.parallel, calls))

    def map(self, fn, items) -> DurableCall:
        return DurableCall(functools.partial(self.sync.map, fn, items))

    def child(self, workflow: str, input: Any = None) -> DurableCall:
        return DurableCall(functools.partial(self.sync.child, workflow, input))

    def start_child(self, workflow: str, input: Any = None) -> DurableCall:
        return DurableCall(functools.partial(self.sync.start_child, workflow, input))

    def patched(self, change_id: str) -> bool:
        return self.sync.patched(change_id)

    def deprecate_patch(self, change_id: str) -> None:
        return self.sync.deprecate_patch(change_id)

    @property
    def run_id(self):
        return self.sync.run_id

    @property
    def input(self) -> Any:
        return self.sync.input

    @property
    def position(self) -> int:
        return self.sync.position


ONLY_DURABLE_CALLS = (
    "an async workflow may await only its context's durable calls (ctx.step, ctx.sleep, "
    "ctx.wait_for_signal, ctx.parallel, ...), not {what}: work that waits belongs in a step"
)


def call_workflow(fn: Callable[..., Any], ctx, data: Any) -> Any:
    """Call a workflow function with `ctx` and its input, sync or async alike; its output."""
    if not inspect.iscoroutinefunction(fn):
        return fn(ctx, data)
    return drive(fn(AsyncContext(ctx), data))


def drive(coroutine: Coroutine) -> Any:
    """Run an async workflow's coroutine on this thread, making each durable call it awaits.

    The outcome of each call (its value, or what it raised, a suspension included) is sent
    back into the coroutine at its `await`; the coroutine's return value is returned.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            awaited = coroutine.send(value) if error is None else coroutine.throw(error)
        except StopIteration as returned:
            return returned.value
        except RuntimeError as exc:
            # asyncio.sleep(), asyncio.gather() and the like, in workflow code: no loop runs here.
            if "event loop" in str(exc):
                raise TypeError(ONLY_DURABLE_CALLS.format(what="asyncio's own calls")) from exc
            raise
        value, error = None, None
        if awaited is None:  # a bare yield (asyncio.sleep(0)): nothing to wait for
            continue
        if not isinstance(awaited, DurableCall):
            error = TypeError(ONLY_DURABLE_CALLS.format(what=repr(awaited)))
            continue
        try:
            value = awaited._call()
        except BaseException as exc:  # handed to the workflow code, where it was awaited
            error = exc
