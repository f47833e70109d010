"""Parallel steps, child runs, concurrency limits and rate limits, driven in-process."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from runs.models import AuditEntry, Run, Status, WaitKind
from runs.recovery import sweep
from steps.models import Attempt, Branch, BranchStatus, CheckpointStatus, RateLimitGrant
from tests import workflows
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)


def branches_of(run):
    return list(Branch.objects.live().filter(run=run).order_by("index"))


# --- parallel steps ------------------------------------------------------------------


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]])
def test_it_returns_branch_outputs_in_call_order_whatever_order_they_finish(doorbells, order):
    run = Run.objects.start("fan_out", {"items": [1, 2, 3, 4]})
    assert doorbells.drain() == ["ok/branches"]
    run.refresh_from_db()
    # The parent is released while its branches run, each dispatched on its own.
    assert (run.status, run.wait_kind, run.wait_position) == (Status.WAITING, WaitKind.BRANCHES, 0)
    assert len(doorbells.branches) == 4
    assert [b.index for b in branches_of(run)] == [0, 1, 2, 3]

    assert doorbells.drain_branches(order) == ["succeeded"] * 4
    assert doorbells.rung == [run.pk]  # the last branch to finish woke the parent
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"squares": [1, 4, 9, 16], "total": 30}
    group = run.live_checkpoints().get(position=0)
    assert (group.name, group.output) == ("parallel:4", [1, 4, 9, 16])
    assert workflows.CALLS["square"] == 4

    # Replay returns the group from its checkpoint: no branch runs again.
    run.retry_from(1, by="tester")
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"squares": [1, 4, 9, 16], "total": 30}
    assert workflows.CALLS["square"] == 4
    assert doorbells.branches == []


def test_it_gives_each_branch_its_own_stable_idempotency_key(doorbells):
    run = Run.objects.start("fan_out_mixed", {})
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.output == [3, 10, 9]
    keys = workflows.KEYS["add"] + workflows.KEYS["double"] + workflows.KEYS["square"]
    assert keys == [f"{run.idempotency_key}-0-0.{index}" for index in range(3)]


def test_it_re_runs_only_the_unfinished_branches_after_a_crash(doorbells):
    workflows.TOGGLES["crash_on"] = 3
    run = Run.objects.start("fan_out", {"items": [1, 2, 3, 4]})
    doorbells.drain()
    assert doorbells.drain_branches([0, 1]) == ["succeeded", "succeeded"]
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain_branches([0])  # the worker dies while squaring 3
    assert doorbells.drain_branches() == ["succeeded"]  # the fourth branch, on another worker

    assert [b.status for b in branches_of(run)] == ["succeeded", "succeeded", "running", "succeeded"]
    lapse_leases()
    report = sweep()
    assert report.branches_recovered == 1
    assert doorbells.drain_branches() == ["succeeded"]
    doorbells.drain()
    run.refresh_from_db()
    assert run.output == {"squares": [1, 4, 9, 16], "total": 30}
    # Four squares, plus the one that was cut off: finished branches never ran again.
    assert workflows.CALLS["square"] == 5
    assert branches_of(run)[2].recovery_count == 1


def test_it_fails_the_group_when_a_branch_fails_for_good_and_keeps_the_others(doorbells):
    workflows.TOGGLES["refuse"] = 2
    run = Run.objects.start("fan_out_failing", {"items": [1, 2, 3]})
    doorbells.drain()
    assert doorbells.drain_branches() == ["succeeded", "retry", "succeeded"]
    sweep()  # the retry is due at once
    assert doorbells.drain_branches() == ["failed"]
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"caught": "ValueError", "message": "branch 1 (picky) failed: cannot handle 2"}
    assert [(b.status, b.output) for b in branches_of(run)] == [
        (BranchStatus.SUCCEEDED, 1),
        (BranchStatus.FAILED, None),
        (BranchStatus.SUCCEEDED, 3),
    ]
    assert Attempt.objects.filter(run=run, branch=1).count() == 2
    group = run.live_checkpoints().get(position=0)
    assert group.status == CheckpointStatus.FAILED

    # Replay (here after a crash at the very end) raises the same error from the
    # group's checkpoint: no branch runs again.
    calls = workflows.CALLS["picky"]
    Run.objects.filter(pk=run.pk).update(status=Status.RUNNING, lease_owner="gone", lease_token="gone")
    lapse_leases()
    sweep()
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output["caught"] == "ValueError"
    assert workflows.CALLS["picky"] == calls
    assert doorbells.branches == []


def test_it_resumes_a_failed_group_by_re_running_only_its_failed_branches(doorbells):
    run = Run.objects.start("fan_out", {"items": [1, 2, 3]})
    doorbells.drain()
    doorbells.drain_branches([0, 2])
    # Branch 1 failed for good (its worker was lost too often, say).
    branch = branches_of(run)[1]
    Branch.objects.filter(pk=branch.pk).update(
        status=BranchStatus.FAILED, error_type="WorkerLost", error_message="worker lost 6 times"
    )
    doorbells.branches.clear()
    sweep()
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_position == 0

    run.resume(by="tester")
    assert doorbells.drain() == ["ok/branches"]
    assert doorbells.drain_branches() == ["succeeded"]  # only the failed branch was dispatched again
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"squares": [1, 4, 9], "total": 14}
    assert workflows.CALLS["square"] == 3


def test_it_rejects_a_parallel_call_of_a_function_no_worker_can_import(doorbells):
    from runs.workflow import StepDefinition

    def local_helper(x):
        return x

    with pytest.raises(TypeError, match="module-level function"):
        _ = StepDefinition(fn=local_helper, name="local").target


# --- child runs -------------------------------------------------------------------------


def test_it_waits_for_a_child_run_and_returns_its_output(doorbells):
    run = Run.objects.start("parent", {"a": 5})
    assert execute_next(doorbells) == "ok/child"
    assert Run.objects.get(pk=run.pk).wait_kind == WaitKind.CHILD
    # Background child waits for its signal; the awaited child finishes and wakes the parent.
    assert doorbells.drain() == ["ok/signal", "succeeded", "succeeded"]
    run.refresh_from_db()
    children = {child.workflow: child for child in run.children.all()}
    assert set(children) == {"approval", "arithmetic"}
    assert children["arithmetic"].parent_position == 1
    assert run.output["child_result"] == {"total": 6, "doubled": 12, "bumped": 13}
    assert run.output["background"] == children["approval"].pk
    assert Run.objects.get(pk=children["approval"].pk).status == Status.WAITING


def test_it_does_not_start_a_child_twice_when_the_parent_crashes(doorbells):
    run = Run.objects.start("parent", {"a": 1})
    doorbells.drain()  # parent waits for its child; both children started
    Run.objects.filter(pk=run.pk).update(status=Status.RUNNING, lease_token="dead", lease_owner="gone")
    lapse_leases()
    sweep()
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.children.count() == 2
    assert Run.objects.filter(workflow="arithmetic").count() == 1


def test_it_cancels_children_with_their_parent(doorbells):
    run = Run.objects.start("parent", {"a": 1})
    assert execute_next(doorbells) == "ok/child"  # the parent started both children, then waits
    run.refresh_from_db()
    assert set(run.children.values_list("status", flat=True)) == {Status.PENDING}

    run.cancel(by="olivia", reason="customer withdrew")
    assert set(run.children.values_list("status", flat=True)) == {Status.CANCELLED}
    assert AuditEntry.objects.filter(action="cancel", reason=f"parent run {run.pk} cancelled").count() == 2
    assert doorbells.drain() == ["skipped", "skipped"]  # the children's doorbells find nothing to do


def test_it_resumes_a_parent_with_its_failed_child_and_reuses_finished_children(doorbells):
    run = Run.objects.start("parent_of_failure", {})
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "ChildRunFailed"
    child = run.children.get()
    assert child.status == Status.FAILED

    run.resume(by="tester")
    child.refresh_from_db()
    assert child.status == Status.PENDING  # resumed together with its parent
    doorbells.drain_all()
    assert run.children.count() == 1  # no second child


# --- concurrency limits ---------------------------------------------------------------------


def test_it_queues_runs_beyond_the_concurrency_limit_in_priority_then_fifo_order(doorbells):
    runs = [Run.objects.start("limited", {"n": n}) for n in range(3)]
    urgent = Run.objects.start("limited", {"n": 99}, priority=5)
    statuses = [Run.objects.get(pk=r.pk).status for r in [*runs, urgent]]
    assert statuses == [Status.PENDING, Status.PENDING, Status.QUEUED, Status.QUEUED]
    assert doorbells.rung == [runs[0].pk, runs[1].pk]

    assert execute_next(doorbells) == "succeeded"  # a slot frees: the urgent run goes first
    assert doorbells.rung == [runs[1].pk, urgent.pk]
    assert Run.objects.get(pk=runs[2].pk).status == Status.QUEUED
    doorbells.drain_all()
    assert set(Run.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}


def execute_next(doorbells):
    from runs.engine import execute_run

    return execute_run(doorbells.rung.pop(0))


def test_it_admits_queued_runs_from_the_sweep_when_a_slot_is_free(doorbells, settings):
    settings.DURABLE_CONCURRENCY = {"arithmetic": 1}
    first = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    second = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    assert Run.objects.get(pk=second.pk).status == Status.QUEUED
    Run.objects.filter(pk=first.pk).update(status=Status.CANCELLED)  # freed behind the engine's back
    assert sweep().admitted == 1
    assert Run.objects.get(pk=second.pk).status == Status.PENDING


def test_it_cancels_a_queued_run(doorbells):
    Run.objects.start("limited", {"n": 1})
    Run.objects.start("limited", {"n": 2})
    queued = Run.objects.start("limited", {"n": 3})
    assert queued.cancel(by="olivia") == "cancelled"


# --- rate limits ------------------------------------------------------------------------------


def test_it_holds_a_step_at_its_rate_limit_without_counting_an_attempt(doorbells):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        run = Run.objects.start("rate_limited", {"calls": 3})
        assert doorbells.drain() == ["ok/rate"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind, run.steps_done) == (Status.WAITING, WaitKind.RATE, 2)
    assert run.wake_at == start + timedelta(seconds=1)
    assert Attempt.objects.filter(run=run).count() == 0
    assert RateLimitGrant.objects.filter(key="test:api").count() == 2

    with time_machine.travel(start + timedelta(seconds=1.01), tick=False):
        sweep()
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == [0, 1, 2]
    assert run.live_checkpoints().get(position=2).attempts == 1


def test_it_reads_rate_limit_overrides_from_settings(doorbells, settings):
    settings.DURABLE_RATE_LIMITS = {"test:api": (10, 1.0)}
    run = Run.objects.start("rate_limited", {"calls": 5})
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == [0, 1, 2, 3, 4]


def test_it_replaces_children_of_superseded_steps_on_retry(doorbells):
    run = Run.objects.start("parent", {"a": 1})
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    background = Run.objects.get(pk=run.output["background"])
    assert background.status == Status.WAITING

    run.retry_from(0, by="tester")
    background.refresh_from_db()
    assert background.status == Status.CANCELLED
    assert background.audit_entries.get(action="cancel").reason == f"parent run {run.pk} retried from step 0"
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.children.count() == 4  # a new pair for the new epoch; the old pair kept
    assert run.output["background"] != background.pk
