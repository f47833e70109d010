"""Run a step's code with a time limit that the step cannot swallow."""

from __future__ import annotations

import contextvars
import ctypes
import inspect
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from steps import eventloop
from steps.retry import StepTimeout


class _Deadline(BaseException):
    """Raised inside a step when its time is up.

    A BaseException, so that the `except Exception` of an HTTP retry loop inside the step
    does not swallow it; it leaves the step as StepTimeout.
    """


def step_time_limit(timeout: float | None) -> float | None:
    """A step's own timeout, or the global maximum step duration (None: unlimited)."""
    return timeout or settings.DURABLE_MAX_STEP_SECONDS or None


def call_with_timeout(
    fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float | None, *, own: bool = True
) -> Any:
    """Call fn, interrupting it with StepTimeout once `seconds` have passed.

    In the main thread (Celery's solo pool, and a prefork pool process that executes one
    run at a time) a SIGALRM timer interrupts the step even inside blocking I/O. On another
    thread (runs.executor's) a step's `own` timeout runs it on a helper thread that is
    abandoned on timeout: Python cannot kill a thread, so its late result is discarded,
    never checkpointed. The global maximum (not `own`) costs no thread per step there: a
    watchdog raises the interruption inside the step's thread, which reaches Python code
    but not a call blocked in C; that is killed with its process later (runs.liveness).
    An `async def` step runs on the process's event loop (steps.eventloop), where its time
    limit, own or global, cancels the coroutine.
    Either way a step that returns (or raises) after its time is recorded as timed out:
    swallowing the interruption does not save it.
    """
    if inspect.iscoroutinefunction(fn):
        return _call_async(fn(*args, **kwargs), seconds or None)
    if not seconds:
        return _call_async(fn(*args, **kwargs), None)  # a coroutine returned by a wrapper
    started = time.monotonic()
    try:
        if threading.current_thread() is threading.main_thread():
            value = _call_with_alarm(fn, args, kwargs, seconds)
        elif own:
            value = _call_in_thread(fn, args, kwargs, seconds)
        else:
            value = _watchdog.call(fn, args, kwargs, seconds)
    except _Deadline:
        raise _timed_out(seconds) from None
    except Exception:
        if time.monotonic() - started >= seconds:
            raise _timed_out(seconds) from None
        raise
    if time.monotonic() - started >= seconds:
        raise _timed_out(seconds)
    # A plain function that returned a coroutine (a wrapped async step): the rest of its time.
    return _call_async(value, seconds - (time.monotonic() - started))


def _call_async(value: Any, seconds: float | None) -> Any:
    """Await a step's coroutine on the process's event loop, cancelled after `seconds`."""
    if not inspect.iscoroutine(value):
        return value
    if seconds is None:
        return eventloop.run(value, None)
    started = time.monotonic()
    try:
        value = eventloop.run(value, max(seconds, 0.001))
    except eventloop.Deadline:
        raise _timed_out(seconds) from None
    except Exception:
        if time.monotonic() - started >= seconds:
            raise _timed_out(seconds) from None
        raise
    if time.monotonic() - started >= seconds:  # it swallowed its cancellation and returned
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
    # The step's code sees the caller's context variables (current_step() among them).
    context = contextvars.copy_context()

    def target():
        try:
            outcome["value"] = context.run(fn, *args, **kwargs)
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


class _Watchdog:
    """One thread that raises _Deadline inside the threads whose step ran past its time."""

    INTERVAL = 0.25  # seconds

    def __init__(self):
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}  # thread ident: when its step's time is up
        self._fired: set[int] = set()
        self._thread: threading.Thread | None = None

    def call(self, fn, args, kwargs, seconds):
        ident = threading.get_ident()
        with self._lock:
            self._deadlines[ident] = time.monotonic() + seconds
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._loop, daemon=True, name="durable-watchdog")
                self._thread.start()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                del self._deadlines[ident]
                fired = ident in self._fired
                self._fired.discard(ident)
            if fired:
                # Raised, or about to be: cancel the pending one, and leave as timed out here,
                # so that it can never land in the engine's code after the step.
                _set_async_exception(ident, None)
                raise _Deadline

    def _loop(self) -> None:
        pause = threading.Event()  # never set: waits without time.sleep, which tests may patch
        while True:
            pause.wait(self.INTERVAL)
            now = time.monotonic()
            with self._lock:
                for ident, deadline in self._deadlines.items():
                    if deadline <= now and ident not in self._fired:
                        self._fired.add(ident)
                        _set_async_exception(ident, _Deadline)


def _set_async_exception(ident: int, exception: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exception) if exception else ctypes.c_void_p(0)
    )


_watchdog = _Watchdog()
