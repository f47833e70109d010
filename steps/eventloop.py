"""The process's one event loop, on which every `async def` step runs.

The loop lives on a thread of its own, started on first use (after a fork: threads do not
survive it). A run's thread (runs.executor's, or the process's main thread) hands an
async step to the loop and waits for its outcome, so async steps cost no thread each and
many runs' async steps share the loop. A step's time limit cancels its coroutine on the
loop; the waiting thread gives up a little later even if the loop itself is blocked (a
step calling blocking code without awaiting), and that step is recorded as timed out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any

# How long after a step's time limit its thread stops waiting for the cancelled coroutine
# to unwind (a blocked loop cannot even deliver the cancellation).
UNWIND_GRACE = 1.0

_lock = threading.Lock()
_loops: dict[int, asyncio.AbstractEventLoop] = {}


class Deadline(BaseException):
    """The step's time limit cancelled it (steps.timeouts turns this into StepTimeout)."""


def loop() -> asyncio.AbstractEventLoop:
    """This process's event loop, running on its own daemon thread."""
    pid = os.getpid()
    with _lock:
        if pid not in _loops:
            _loops.clear()  # a forked child: the parent's loop thread did not come along
            new = asyncio.new_event_loop()
            started = threading.Event()
            threading.Thread(target=_serve, args=(new, started), daemon=True, name="durable-loop").start()
            started.wait()
            _loops[pid] = new
        return _loops[pid]


def _serve(new: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(new)
    new.call_soon(started.set)
    new.run_forever()


def run(coroutine: Coroutine, seconds: float | None) -> Any:
    """Run `coroutine` on the process's loop and return its result (or raise its error).

    It sees the caller's context variables (current_step()). After `seconds` it is
    cancelled and Deadline is raised here.
    """
    if _on_loop_thread():
        coroutine.close()
        raise RuntimeError("an async step cannot be run from the event loop's own thread")
    done: concurrent.futures.Future = concurrent.futures.Future()
    context = contextvars.copy_context()
    target = loop()
    tasks: list[asyncio.Task] = []

    def start() -> None:
        task = target.create_task(_bounded(coroutine, seconds), context=context)
        tasks.append(task)
        task.add_done_callback(lambda finished: _settle(finished, done))

    target.call_soon_threadsafe(start)
    try:
        # exception(), not result(): a TimeoutError the step raised is its own failure.
        error = done.exception(timeout=None if seconds is None else seconds + UNWIND_GRACE)
    except concurrent.futures.TimeoutError:
        # The loop could not even cancel it in time: leave it, cancelled, and go on.
        target.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
        raise Deadline from None
    if error is not None:
        raise error
    return done.result()


async def _bounded(coroutine: Coroutine, seconds: float | None) -> Any:
    if seconds is None:
        return await coroutine
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await coroutine
    except TimeoutError:
        if limit.expired():  # ours, not a TimeoutError the step raised itself
            raise Deadline from None
        raise


def _settle(task: asyncio.Task, done: concurrent.futures.Future) -> None:
    if task.cancelled():
        # Not by its time limit (that is Deadline): an ordinary failed attempt, not a
        # BaseException that would unwind the engine itself.
        done.set_exception(RuntimeError("the step's coroutine was cancelled"))
        return
    error = task.exception()
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(task.result())


def _on_loop_thread() -> bool:
    current = _loops.get(os.getpid())
    if current is None:
        return False
    try:
        return asyncio.get_running_loop() is current
    except RuntimeError:
        return False
