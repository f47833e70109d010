"""What the durable agent integrations share: the agent's loop on a thread of its own.

Agent SDKs (Pydantic AI, the OpenAI Agents SDK) are async and `ctx.step` is synchronous. The
agent runs on an event loop of its own thread; the workflow thread serves its steps one at a
time, each step's body running back on the agent's loop (so SDK clients stay on one loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runs.workflow import RetryPolicy
from steps.retry import DEFAULT_RETRY_POLICY

WAKE_SECONDS = 0.25
# How long a cancelled agent may take to unwind (a sync tool's thread cannot be stopped).
ABANDON_AFTER_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolOptions:
    """How one tool's step is retried and how long one attempt may take (seconds)."""

    retry: RetryPolicy = DEFAULT_RETRY_POLICY
    timeout: float | None = None


class Bridge:
    """Runs the agent on a loop of its own thread while the workflow thread executes its steps."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main: asyncio.Task | None = None

    def drive(self, make_run: Callable[..., Awaitable[Any]]) -> Any:
        """Run the coroutine `make_run(bridge=self)` on the agent thread, serving its steps here."""
        outcome: dict[str, Any] = {}

        async def main():
            self.loop, self.main = asyncio.get_running_loop(), asyncio.current_task()
            return await make_run(bridge=self)

        def agent_thread():
            try:
                outcome["value"] = asyncio.run(main())
            except BaseException as exc:  # handed to the workflow thread
                outcome["error"] = exc
            finally:
                self.requests.put(None)

        # The agent's thread sees this thread's context (the Django test database, for one).
        thread = threading.Thread(target=contextvars.copy_context().run, args=(agent_thread,), daemon=True)
        thread.start()
        try:
            while (request := self.requests.get()) is not None:
                self._serve(*request)
        except BaseException:
            # The run leaves this worker (a wait, a retry's backoff, a lost lease): stop the agent.
            self._cancel()
            self._wind_down(thread)
            raise
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    async def step(self, step_fn: Callable, *args: Any) -> Any:
        """On the agent's loop: have the workflow thread run `ctx.step(step_fn, *args)`."""
        answer = self.loop.create_future()
        self.requests.put((step_fn, args, answer))
        return await answer

    def run_in_agent_loop(self, coroutine: Awaitable[Any]) -> Any:
        """In a step's body: run the real model request or tool on the agent's loop and wait."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            while not future.done():
                # Short waits: an interruption raised in this thread (steps.timeouts) lands between them.
                concurrent.futures.wait([future], timeout=WAKE_SECONDS)
            return future.result()
        finally:
            future.cancel()  # timed out or interrupted: do not let it run on

    def _serve(self, step_fn: Callable, args: tuple, answer: asyncio.Future) -> None:
        try:
            value = self.ctx.step(step_fn, *args)
        except Exception as exc:  # StepFailed and the like: the agent sees them raised
            self.loop.call_soon_threadsafe(_settle, answer, None, exc)
        else:
            self.loop.call_soon_threadsafe(_settle, answer, value, None)

    def _wind_down(self, thread: threading.Thread) -> None:
        """Wait a little for the cancelled agent to finish; a tool stuck in a thread is left behind.

        The run's state is already recorded, so nothing the abandoned agent does can reach it.
        """
        deadline = time.monotonic() + ABANDON_AFTER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                request = self.requests.get(timeout=left)
            except queue.Empty:
                break
            if request is None:
                thread.join()
                return
            self.loop.call_soon_threadsafe(request[2].cancel)  # a step asked for while unwinding
        log.warning("an agent did not stop in %ss; its thread is abandoned", ABANDON_AFTER_SECONDS)

    def _cancel(self) -> None:
        if self.loop is not None and self.main is not None:
            try:
                self.loop.call_soon_threadsafe(self.main.cancel)
            except RuntimeError:  # the loop has already closed
                pass


def _settle(answer: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(value)
