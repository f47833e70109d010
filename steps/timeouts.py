"""Run a step's code with a time limit that the step cannot swallow."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from steps.retry import StepTimeout


class _Deadline(BaseException):
    """Raised inside a step when its time is up.

    A BaseException, so that the `except Exception` of an HTTP retry loop inside the step
    does not swallow it; it leaves the step as StepTimeout.
    """


def step_time_limit(timeout: float | None) -> float | None:
    """A step's own timeout, or the global maximum step duration (None: unlimited).

    The maximum applies where a timer is cheap (the main thread, as in the prefork and solo
    pools); a helper thread per step would cost more than most steps.
    """
    if timeout:
        return timeout
    if threading.current_thread() is threading.main_thread():
        return settings.DURABLE_MAX_STEP_SECONDS or None
    return None


def call_with_timeout(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float | None) -> Any:
    """Call fn, interrupting it with StepTimeout once `seconds` have passed.

    Celery's prefork and solo pools run tasks in the main thread, where a SIGALRM timer
    interrupts the step even inside blocking I/O. Elsewhere the step runs in a helper
    thread that is abandoned on timeout: Python cannot kill a thread, so its late result
    is discarded, never checkpointed. Either way a step that returns (or raises) after its
    time is recorded as timed out: swallowing the interruption does not save it.
    """
    if not seconds:
        return fn(*args, **kwargs)
    started = time.monotonic()
    try:
        if threading.current_thread() is threading.main_thread():
            value = _call_with_alarm(fn, args, kwargs, seconds)
        else:
            value = _call_in_thread(fn, args, kwargs, seconds)
    except _Deadline:
        raise _timed_out(seconds) from None
    except Exception:
        if time.monotonic() - started >= seconds:
            raise _timed_out(seconds) from None
        raise
    if time.monotonic() - started >= seconds:
        raise _timed_out(seconds)
    return value


def _timed_out(seconds: float) -> StepTimeout:
    return StepTimeout(f"step exceeded its timeout of {seconds:g}s")


def _call_with_alarm(fn, args, kwargs, seconds):
    def on_alarm(signum, frame):
        raise _Deadline

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
        raise _Deadline
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
