"""`async def` workflows and steps, driven in-process: the same semantics as sync ones."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from runs.asyncflow import call_workflow
from runs.engine import _advance
from runs.export import export_run, replay
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests import async_workflows, workflows
from tests.test_engine import crash_then_recover, exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_async_records():
    async_workflows.WHERE.clear()
    async_workflows.CANCELLED.clear()
    async_workflows.RELEASED.clear()


def live(run):
    return [(c.position, c.name, c.output, c.attempts) for c in run.live_checkpoints()]


def test_it_checkpoints_async_and_sync_steps_of_an_async_workflow(doorbells):
    run = Run.objects.start("async_arithmetic", {"a": 1, "b": 2})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output == {"total": 3, "doubled": 6, "bumped": 7}
    assert live(run) == [(0, "async_add", 3, 1), (1, "async_double", 6, 1), (2, "add", 7, 1)]
    assert all(c.status == CheckpointStatus.SUCCEEDED for c in run.live_checkpoints())
    assert run.live_checkpoints().get(position=1).meta == {"model": "fake-async", "doubled": 3}
    # The async step ran on the process's event loop, not on a thread of its own.
    assert async_workflows.WHERE == [("durable-loop", True)]


def test_it_runs_every_async_step_of_a_process_on_one_event_loop(doorbells):
    for a in range(3):
        Run.objects.start("async_arithmetic", {"a": a, "b": 1})
    assert doorbells.drain() == ["succeeded"] * 3
    assert async_workflows.WHERE == [("durable-loop", True)] * 3
    assert [t.name for t in threading.enumerate()].count("durable-loop") == 1


def test_it_runs_an_async_step_called_from_a_sync_workflow(doorbells):
    run = Run.objects.start("sync_calls_async", {"a": 2, "b": 5})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == 7
    assert live(run) == [(0, "async_add", 7, 1)]


def test_it_resumes_an_async_workflow_without_running_finished_steps_again(doorbells):
    workflows.TOGGLES["crash"] = True
    run = Run.objects.start("async_arithmetic", {"a": 1, "b": 2})
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain()
    assert [c.name for c in Run.objects.get(pk=run.pk).live_checkpoints()] == ["async_add"]

    assert crash_then_recover(run, doorbells) == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"total": 3, "doubled": 6, "bumped": 7}
    # async_add was replayed from its checkpoint; only the interrupted step ran again.
    assert workflows.CALLS["async_add"] == 1
    assert workflows.CALLS["async_double"] == 2
    assert run.recovery_count == 1


def test_it_retries_an_async_step_with_backoff_and_keeps_its_idempotency_key(doorbells):
    workflows.PAYMENTS.timeouts_left = 2
    run = Run.objects.start("async_payment", {"cents": 500})
    start = timezone.now()
    assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind) == (Status.WAITING, WaitKind.RETRY)
    assert timedelta(seconds=1.5) < run.wake_at - start < timedelta(seconds=3)

    with time_machine.travel(timezone.now() + timedelta(seconds=3), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    assert timedelta(seconds=6) < run.wake_at - start < timedelta(seconds=8)  # the wait doubled
    with time_machine.travel(timezone.now() + timedelta(seconds=8), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["receipt"]["charged"] == 500
    assert Checkpoint.objects.get(run=run).attempts == 3
    attempts = Attempt.objects.filter(run=run).order_by("number")
    assert [(a.number, a.error_type) for a in attempts] == [(1, "TimeoutError"), (2, "TimeoutError")]
    keys = workflows.KEYS["async_charge"]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert keys[0] == run.step_idempotency_key(0)
    assert len(workflows.PAYMENTS.ledger) == 1


def test_it_checkpoints_an_async_steps_final_failure_and_replays_it(doorbells):
    run = Run.objects.start("async_refusal", {})
    doorbells.drain()
    exhaust_retries(doorbells, 2)
    run.refresh_from_db()
    assert run.output == {"caught": "PermissionError", "fallback": 2}
    failed = run.live_checkpoints().get(position=0)
    assert (failed.status, failed.error_type, failed.attempts) == (
        CheckpointStatus.FAILED,
        "PermissionError",
        2,
    )
    assert workflows.CALLS["async_refuse"] == 2

    report = replay(export_run(run))  # the recorded failure is raised again, nothing runs
    assert report.outcome == "clean", report.message
    assert workflows.CALLS["async_refuse"] == 2


@pytest.mark.parametrize("swallow", [False, True])
def test_a_timeout_cancels_the_async_step_and_counts_as_a_failed_attempt(doorbells, swallow):
    run = Run.objects.start("async_timeout", {"swallow": swallow})
    assert doorbells.drain() == ["ok/retry"]
    sweep()
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "StepTimeout"
    attempts = list(Attempt.objects.filter(run=run))
    assert [a.error_type for a in attempts] == ["StepTimeout", "StepTimeout"]
    assert all(a.duration < timedelta(seconds=5) for a in attempts)  # not the step's 30 s
    # Each attempt's coroutine received the cancellation, under the step's one key.
    cancelled_keys = async_workflows.CANCELLED
    assert cancelled_keys == [run.step_idempotency_key(0)] * 2
    failed = Checkpoint.objects.get(run=run, position=0)
    assert (failed.status, failed.error_type) == (CheckpointStatus.FAILED, "StepTimeout")


def test_a_step_that_blocks_the_loop_is_timed_out_without_waiting_for_it(doorbells):
    async_workflows.RELEASE.clear()
    run = Run.objects.start("async_blocker", {})
    try:
        assert doorbells.drain() == ["failed"]
        # The run went on while the step still held the loop: it has not finished yet.
        finished = async_workflows.RELEASED
        assert finished == []
    finally:
        async_workflows.RELEASE.set()
    run.refresh_from_db()
    assert run.error_type == "StepTimeout"
    # The loop serves the next async step once the blocking one lets go.
    other = Run.objects.start("sync_calls_async", {"a": 1, "b": 1})
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=other.pk).output == 2


def test_a_timeout_error_raised_by_the_step_itself_is_not_its_timeout(doorbells):
    run = Run.objects.start("async_own_timeout_error", {})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "TimeoutError"


def test_the_default_maximum_duration_cancels_an_async_step(doorbells, settings):
    settings.DURABLE_MAX_STEP_SECONDS = 0.3
    run = Run.objects.start("async_napper", {"seconds": 30})
    assert doorbells.drain() == ["ok/retry"]
    assert Attempt.objects.get(run=run).error_type == "StepTimeout"
    cancelled_keys = async_workflows.CANCELLED
    assert cancelled_keys == [run.step_idempotency_key(0)]


def test_an_async_workflow_sleeps_without_holding_a_worker(doorbells):
    run = Run.objects.start("async_sleeper", {})
    assert doorbells.drain() == ["ok/sleep"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind, run.lease_owner) == (Status.WAITING, WaitKind.SLEEP, "")
    assert run.wake_at > timezone.now() + timedelta(days=6)

    with time_machine.travel(timezone.now() + timedelta(days=7, seconds=1), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == 2
    assert workflows.CALLS["async_add"] == 2  # the step before the sleep was replayed
    assert [c.name for c in run.live_checkpoints()] == ["async_add", "sleep", "async_add"]


def test_an_async_workflow_waits_for_a_signal(doorbells):
    run = Run.objects.start("async_approval", {})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert (run.status, run.wait_signal) == (Status.WAITING, "approve")

    run.send_signal("approve", {"approved": True}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"plan": 42, "approved": True}
    assert workflows.CALLS["async_add"] == 1


def test_an_async_workflows_signal_wait_gives_up_at_its_deadline(doorbells):
    run = Run.objects.start("async_approval", {"timeout": 3600})
    doorbells.drain()
    with time_machine.travel(timezone.now() + timedelta(hours=1, seconds=1), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"plan": 42, "approved": False}


def test_an_async_workflow_runs_sync_and_async_steps_in_parallel(doorbells):
    run = Run.objects.start("async_fan_out", {"items": [1, 2, 3]})
    assert doorbells.drain() == ["ok/branches"]
    assert doorbells.drain_branches() == ["succeeded"] * 3
    assert doorbells.drain() == ["ok/branches"]
    assert doorbells.drain_branches() == ["succeeded"] * 2
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"squares": [1, 4, 9], "mixed": [3, 9]}
    assert [c.name for c in run.live_checkpoints()] == ["parallel:3", "parallel:2"]
    assert workflows.CALLS["async_square"] == 4  # each branch once; the groups were replayed


def test_an_async_workflow_takes_a_patch_and_replays_it(doorbells):
    run = Run.objects.start("async_patched", {})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == 12
    assert [c.name for c in run.live_checkpoints()] == ["async_add", "patch:extra", "async_add"]
    assert replay(export_run(run)).outcome == "clean"


def test_durable_calls_can_be_awaited_in_helpers_and_made_through_ctx_sync(doorbells):
    run = Run.objects.start("async_nested", {})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == [4, 5]
    assert [c.name for c in run.live_checkpoints()] == ["async_add", "add"]


def test_it_fails_an_async_workflow_that_gathers_steps_itself(doorbells):
    run = Run.objects.start("async_gathers", {})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "TypeError"
    assert "ctx.parallel" in run.error_message
    assert workflows.CALLS["async_add"] == 0


def test_it_fails_an_async_workflow_that_awaits_anything_but_a_durable_call(doorbells):
    run = Run.objects.start("async_awaits_a_timer", {})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "TypeError"
    assert "may await only its context's durable calls" in run.error_message
    assert live(run) == [(0, "async_add", 2, 1)]


def test_replay_of_an_async_run_calls_no_step(doorbells):
    run = Run.objects.start("async_arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    calls = dict(workflows.CALLS)
    report = replay(export_run(Run.objects.get(pk=run.pk)))
    assert report.outcome == "clean", report.message
    assert report.replayed == 3
    assert dict(workflows.CALLS) == calls


def test_replay_of_a_sleeping_async_run_says_what_comes_next(doorbells):
    run = Run.objects.start("async_sleeper", {})
    doorbells.drain()
    report = replay(export_run(Run.objects.get(pk=run.pk)))
    assert report.outcome == "continues"
    assert report.position == 1


def test_a_lost_lease_unwinds_an_async_workflow_without_finishing_it(doorbells):
    run = Run.objects.start("async_arithmetic", {"a": 1, "b": 2})
    doorbells.rung.clear()
    assert Run.objects.claim(run.pk, "w1", "mine")
    Run.objects.filter(pk=run.pk).update(lease_token="theirs")  # taken over before our first write

    assert _advance(Run.objects.get(pk=run.pk), "mine").startswith("lost")
    run.refresh_from_db()
    assert run.status == Status.RUNNING and run.output is None
    assert run.live_checkpoints().count() == 0


# --- the driver, without a database ---------------------------------------------------------


class _Foreign:
    """An awaitable that is not a durable call (as an asyncio future would be)."""

    def __await__(self):
        return (yield "something else")


class _Calls:
    """A stand-in context whose step returns its arguments' sum and counts its calls."""

    def __init__(self):
        self.calls = 0

    def step(self, fn, *args):
        self.calls += 1
        return sum(args)


def test_the_driver_refuses_to_wait_for_anything_but_a_durable_call():
    async def flow(ctx, data):
        total = await ctx.step(None, 1, 2)
        try:
            await _Foreign()
        except TypeError as refused:
            return total, str(refused)

    ctx = _Calls()
    total, refused = call_workflow(flow, ctx, None)
    assert total == 3 and ctx.calls == 1
    assert "may await only its context's durable calls" in refused


def test_a_durable_call_is_made_once_and_only_when_awaited():
    async def flow(ctx, data):
        pending = ctx.step(None, 1)
        made_before_await = ctx.sync.calls
        value = await pending
        try:
            await pending
        except RuntimeError:
            return made_before_await, value, ctx.sync.calls

    assert call_workflow(flow, _Calls(), None) == (0, 1, 1)


def test_a_sync_workflow_is_called_as_it_always_was():
    ctx = _Calls()
    assert call_workflow(lambda ctx, data: ctx.step(None, data, 1), ctx, 4) == 5


def test_a_durable_call_never_awaited_warns():
    async def flow(ctx, data):
        ctx.step(None, 1)  # forgot the await
        return "done"

    with pytest.warns(RuntimeWarning, match="without `await`"):
        assert call_workflow(flow, _Calls(), None) == "done"
