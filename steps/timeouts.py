"""Run a step's code with a time limit."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from steps.retry import StepTimeout


def call_with_timeout(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float | None) -> Any:
    """Call fn, raising StepTimeout inside it once `seconds` have passed.

    Celery's prefork and solo pools run tasks in the main thread, where a
    SIGALRM timer interrupts the step even inside blocking I/O. Elsewhere the
    step runs in a helper thread that is abandoned on timeout: Python cannot
    kill a thread, so its late result is discarded, never checkpointed.
    """
    if not seconds:
        return fn(*args, **kwargs)
    if threading.current_thread() is threading.main_thread():
        return _call_with_alarm(fn, args, kwargs, seconds)
    return _call_in_thread(fn, args, kwargs, seconds)


def _call_with_alarm(fn, args, kwargs, seconds):
    def on_alarm(signum, frame):
        raise StepTimeout(f"step exceeded its timeout of {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(fn, args, kwargs, seconds):
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="durable-step")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise StepTimeout(f"step exceeded its timeout of {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
