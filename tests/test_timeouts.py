"""The maximum step duration on the threads that execute several runs per process (runs.executor)."""

import threading
import time

import pytest

from steps.retry import StepTimeout
from steps.timeouts import call_with_timeout


def on_a_thread(fn):
    """fn() on a thread that is not the main one; what it returned or raised."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return outcome


def spin_for(seconds: float) -> int:
    """Python code that keeps running (it never blocks in C) for `seconds`."""
    turns, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        turns += 1
    return turns


def test_the_watchdog_interrupts_a_step_that_runs_past_the_maximum():
    outcome = on_a_thread(lambda: call_with_timeout(spin_for, (30,), {}, 0.3, own=False))
    assert isinstance(outcome.get("error"), StepTimeout)


def test_the_watchdog_interruption_cannot_be_swallowed():
    def swallows():
        try:
            spin_for(30)
        except BaseException:
            pass
        return "swallowed"

    outcome = on_a_thread(lambda: call_with_timeout(swallows, (), {}, 0.3, own=False))
    assert isinstance(outcome.get("error"), StepTimeout)


@pytest.mark.parametrize("seconds", [0.24, 0.25, 0.26, 0.5])
def test_an_interruption_never_lands_after_the_step(seconds):
    """Steps ending around the watchdog's pass: whatever happens, it happens inside the call."""

    def then_keep_going():
        try:
            call_with_timeout(spin_for, (seconds,), {}, 0.25, own=False)
        except StepTimeout:
            pass
        return spin_for(1.0)  # an interruption leaking out of the call would land here

    for _ in range(3):
        outcome = on_a_thread(then_keep_going)
        assert "error" not in outcome, outcome


def test_a_step_with_its_own_timeout_sees_current_step_on_a_run_thread():
    # Off the main thread such a step runs on a helper thread: it must still know itself
    # (tools read current_step() for their idempotency key).
    from runs.workflow import StepInfo, _current_step, current_step

    def step_on_run_thread():
        _current_step.set(StepInfo(run_id=1, name="tool:pay", position=3, attempt=1, idempotency_key="k-3"))
        return call_with_timeout(lambda: current_step().idempotency_key, (), {}, 5, own=True)

    assert on_a_thread(step_on_run_thread) == {"value": "k-3"}
