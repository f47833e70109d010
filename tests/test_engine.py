"""The engine's semantics, driven in-process: checkpoints, replay, retries, waits."""

from datetime import timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from runs import recovery
from runs.engine import execute_run
from runs.models import AuditEntry, InvalidOperation, Run, Status, WaitKind, WorkerProcess
from runs.recovery import sweep
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests import workflows
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)


def crash_then_recover(run, doorbells):
    """The worker died mid-step: its lease lapses and the sweep dispatches the run again."""
    lapse_leases()
    report = sweep()
    assert report.recovered == 1
    assert doorbells.rung == [run.pk]
    return doorbells.drain()


def exhaust_retries(doorbells, rounds):
    """Let every backoff elapse in turn, answering the doorbells the sweep rings."""
    start = timezone.now()
    doorbells.drain()
    for round in range(1, rounds + 1):
        with time_machine.travel(start + timedelta(minutes=5 * round), tick=False):
            sweep()
            doorbells.drain()


# --- 1. checkpoint per step ---------------------------------------------------------


def test_it_checkpoints_each_step_with_output_name_position_timing_and_attempts(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output == {"total": 3, "doubled": 6, "bumped": 7}
    assert run.steps_done == 3
    checkpoints = list(run.live_checkpoints())
    assert [(c.position, c.name, c.output, c.attempts) for c in checkpoints] == [
        (0, "add", 3, 1),
        (1, "double", 6, 1),
        (2, "maybe_crash", 7, 1),
    ]
    for checkpoint in checkpoints:
        assert checkpoint.status == CheckpointStatus.SUCCEEDED
        assert checkpoint.started_at <= checkpoint.finished_at


def test_it_commits_no_checkpoint_when_the_run_has_moved_to_another_worker(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.rung.clear()
    assert Run.objects.claim(run.pk, "w1", "token-1")
    run.refresh_from_db()
    # Another worker took the run over (its lease token differs): our write must not land.
    Run.objects.filter(pk=run.pk).update(lease_token="token-2")
    assert (
        run.record_checkpoint(
            "token-1",
            position=0,
            name="add",
            status="succeeded",
            output=3,
            attempts=1,
            epoch=0,
            started_at=timezone.now(),
            finished_at=timezone.now(),
        )
        == "lost"
    )
    assert Checkpoint.objects.filter(run=run).count() == 0
    assert Run.objects.get(pk=run.pk).steps_done == 0


def test_it_rejects_a_second_live_checkpoint_at_a_position(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    first = Checkpoint.objects.get(run=run, position=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Checkpoint.objects.create(
            run=run,
            position=0,
            name="add",
            status="succeeded",
            output=99,
            started_at=first.started_at,
            finished_at=first.finished_at,
        )


# --- 2. replay ----------------------------------------------------------------------


def test_it_resumes_after_a_crash_without_running_finished_steps_again(doorbells):
    workflows.TOGGLES["crash"] = True
    run = Run.objects.start("arithmetic", {"a": 2, "b": 3})
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.RUNNING
    assert run.steps_done == 2

    assert crash_then_recover(run, doorbells) == ["succeeded"]
    run.refresh_from_db()
    # Local variables were restored from checkpoints: total and doubled came from replay.
    assert run.output == {"total": 5, "doubled": 10, "bumped": 11}
    assert workflows.CALLS == {"add": 1, "double": 1, "maybe_crash": 2}
    assert run.recovery_count == 1
    assert Checkpoint.objects.filter(run=run).count() == 3


def test_it_replays_a_dynamic_agent_loop(doorbells):
    run = Run.objects.start("agent_loop", {"budget": 5})
    doorbells.drain()
    run.refresh_from_db()
    assert run.output["turns"] == 5
    assert run.steps_done == 10
    calls_before = dict(workflows.CALLS)

    # Retry from the last step: the first nine are replayed from their checkpoints.
    run.retry_from(9, by="tester")
    doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output["notes"] == ["result 0", "page 1", "result 2", "page 3", "result 4"]
    assert workflows.CALLS["think"] == calls_before["think"]
    assert workflows.CALLS["search"] == calls_before["search"] + 1


# --- 3. non-determinism ---------------------------------------------------------------


def test_it_fails_the_run_when_replay_meets_a_different_step(doorbells):
    workflows.TOGGLES["crash"] = True
    run = Run.objects.start("branching", {})
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain()
    # The code changed while the run was in flight: it now calls a different step.
    workflows.TOGGLES["branch"] = "double"
    Checkpoint.objects.create(
        run=run,
        position=1,
        name="maybe_crash",
        status="succeeded",
        output=4,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    Run.objects.filter(pk=run.pk).update(steps_done=2)
    assert crash_then_recover(run, doorbells) == ["failed"]
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "NonDeterminismError"
    assert "'double'" in run.error_message and "'maybe_crash'" in run.error_message
    assert "position 1" in run.error_message
    assert workflows.CALLS["double"] == 0


# --- 4. retries ---------------------------------------------------------------------------


def test_it_succeeds_when_the_payment_api_times_out_twice_then_answers(doorbells):
    workflows.PAYMENTS.timeouts_left = 2
    run = Run.objects.start("payment", {"cents": 500})
    start = timezone.now()

    # First attempt fails: the run is released, not blocking a worker, until the backoff ends.
    assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    assert run.status == Status.WAITING
    assert run.wait_kind == WaitKind.RETRY
    assert timedelta(seconds=1.5) < run.wake_at - start < timedelta(seconds=3)
    assert sweep().woken == 0  # not due yet

    with time_machine.travel(timezone.now() + timedelta(seconds=3), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["ok/retry"]
    run.refresh_from_db()
    # Backoff doubles: the second wait is about four seconds.
    assert timedelta(seconds=6) < run.wake_at - start < timedelta(seconds=8)
    with time_machine.travel(timezone.now() + timedelta(seconds=8), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output["receipt"]["charged"] == 500
    assert len(workflows.PAYMENTS.ledger) == 1
    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.attempts == 3
    attempts = list(Attempt.objects.filter(run=run).order_by("number"))
    assert [(a.number, a.error_type) for a in attempts] == [(1, "TimeoutError"), (2, "TimeoutError")]
    for attempt in attempts:
        assert "payment provider did not answer" in attempt.error_message
        assert "Traceback" in attempt.error_traceback and "TimeoutError" in attempt.error_traceback
        assert attempt.started_at <= attempt.finished_at


def test_it_checkpoints_a_failure_when_attempts_run_out_and_replays_it(doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 500})
    exhaust_retries(doorbells, rounds=4)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "TimeoutError"
    assert run.error_position == 0
    failure = Checkpoint.objects.get(run=run)
    assert failure.status == CheckpointStatus.FAILED
    assert failure.attempts == 4
    assert Attempt.objects.filter(run=run).count() == 4
    assert workflows.CALLS["charge"] == 4


def test_it_lets_workflow_code_catch_a_failed_step_and_replays_the_same_error(doorbells):
    run = Run.objects.start("refusal", {})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    # PermissionError is non-retryable for this step: one attempt, then a failure checkpoint.
    assert run.output == {"caught": "PermissionError", "fallback": 2}
    assert workflows.CALLS["refuse"] == 1
    failure = run.live_checkpoints().get(position=0)
    assert failure.status == CheckpointStatus.FAILED
    assert failure.attempts == 1

    run.retry_from(1, by="tester")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    # Replay re-raised the recorded failure instead of calling the step again.
    assert run.output == {"caught": "PermissionError", "fallback": 2}
    assert workflows.CALLS["refuse"] == 1


def test_it_does_not_retry_a_non_retryable_error(doorbells):
    run = Run.objects.start("malformed", {})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "NonRetryableError"
    assert "card number is malformed" in run.error_message
    assert workflows.CALLS["bad_request"] == 1


def test_it_fails_a_step_that_returns_non_json_without_writing_a_corrupt_row(doorbells):
    run = Run.objects.start("non_json", {})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "StepOutputError"
    assert "not JSON-serialisable" in run.error_message
    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.status == CheckpointStatus.FAILED
    assert checkpoint.output is None


def test_it_rejects_non_json_input_at_start():
    with pytest.raises(ValueError, match="run input is not JSON"):
        Run.objects.start("arithmetic", {"a": {1, 2}})
    assert Run.objects.count() == 0


# --- 5. timeouts ------------------------------------------------------------------------------


def test_it_counts_a_step_that_exceeds_its_timeout_as_a_failed_attempt(doorbells):
    run = Run.objects.start("timeout", {})
    assert doorbells.drain() == ["ok/retry"]
    sweep()
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "StepTimeout"
    assert [a.error_type for a in Attempt.objects.filter(run=run)] == ["StepTimeout", "StepTimeout"]
    assert workflows.CALLS["slow"] == 2
    for attempt in Attempt.objects.filter(run=run):
        assert attempt.duration < timedelta(seconds=1)


# --- 6. idempotency keys ------------------------------------------------------------------------


def test_it_keeps_a_steps_idempotency_key_across_retries_and_crash_resumes(doorbells):
    workflows.PAYMENTS.timeouts_left = 1
    run = Run.objects.start("payment", {"cents": 100})
    doorbells.drain()
    with time_machine.travel(timezone.now() + timedelta(minutes=1), tick=False):
        sweep()
        doorbells.drain()
    keys = workflows.KEYS["charge"]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert keys[0] == run.step_idempotency_key(0)

    workflows.TOGGLES["crash"] = True
    other = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain()
    crash_then_recover(other, doorbells)
    crash_keys = workflows.KEYS["maybe_crash"]
    assert len(crash_keys) == 2 and crash_keys[0] == crash_keys[1]


def test_it_gives_new_keys_on_retry_from_step_and_keeps_them_on_resume(doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 100})
    exhaust_retries(doorbells, rounds=4)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    original = workflows.KEYS["charge"][0]

    workflows.PAYMENTS.timeouts_left = 0
    run.resume(by="tester")
    doorbells.drain()
    assert workflows.KEYS["charge"][-1] == original  # resume: same key, the provider dedupes

    run.refresh_from_db()
    run.retry_from(0, by="tester")
    doorbells.drain()
    assert workflows.KEYS["charge"][-1] != original  # retry from step: asked to happen again
    assert len(workflows.PAYMENTS.ledger) == 2


# --- 7. crash detection and recovery ---------------------------------------------------------------


def test_it_leaves_runs_with_a_live_heartbeat_alone(doorbells):
    workflows.TOGGLES["crash"] = True
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    with pytest.raises(workflows.SimulatedCrash):
        doorbells.drain()
    assert sweep().recovered == 0
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING


def test_it_dead_letters_a_run_that_keeps_losing_its_worker(doorbells, settings):
    settings.DURABLE_MAX_RECOVERIES = 2
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.rung.clear()
    for expected in ["pending", "pending", "dead"]:
        Run.objects.filter(pk=run.pk).update(status=Status.PENDING)
        assert execute_run.__name__  # the claim below stands in for a worker that then dies
        assert Run.objects.claim(run.pk, "gone-worker", f"t-{expected}")
        lapse_leases()
        sweep()
        assert Run.objects.get(pk=run.pk).status == expected
    run.refresh_from_db()
    assert run.recovery_count == 3
    assert run.error_type == "WorkerLost"
    assert AuditEntry.objects.filter(run=run, action="recover").count() == 3


def dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_it_recovers_at_once_the_run_of_a_pool_process_that_died(doorbells):
    from runs.liveness import Supervisor, child_name

    pid = dead_pid()
    supervisor = Supervisor("host:1:abc", children=list)
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.rung.clear()
    assert Run.objects.claim(run.pk, child_name("host:1:abc", pid), "claim-token")
    other = Run.objects.start("arithmetic", {"a": 2, "b": 2})
    assert Run.objects.claim(other.pk, "another-worker/7", "other-token")
    doorbells.rung.clear()

    supervisor.tick()  # the supervisor's next pass notices its pool process is gone
    assert Run.objects.get(pk=run.pk).status == Status.PENDING
    assert Run.objects.get(pk=other.pk).status == Status.RUNNING  # not its own: left alone
    assert doorbells.rung == [run.pk]
    assert doorbells.drain() == ["succeeded"]
    recovered = Run.objects.get(pk=run.pk)
    assert (recovered.recovery_count, recovered.lost_in_a_row) == (1, 0)  # progress reset the streak


def test_it_never_takes_back_a_claim_that_lands_between_two_supervisor_passes(doorbells):
    """The interleaving that made a heartbeat release healthy work: claim, a pass, execute."""
    import os

    from runs.liveness import Supervisor, child_name

    supervisor = Supervisor("host:1:abc", children=lambda: [os.getpid()])
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.rung.clear()
    holder = child_name("host:1:abc", os.getpid())
    assert Run.objects.claim(run.pk, holder, "fresh-claim")
    supervisor.tick()
    lapse_leases()
    WorkerProcess.beat(holder, "host", os.getpid())
    assert sweep().recovered == 0
    held = Run.objects.get(pk=run.pk)
    assert (held.status, held.lease_token) == (Status.RUNNING, "fresh-claim")
    assert doorbells.rung == []


def test_the_pool_never_forks_while_the_supervisor_is_inside_its_sqlite_work():
    """A fork copies SQLite's in-memory locks: a child forked mid-transaction could never write."""
    import threading

    from django.db import connection

    from runs.liveness import Supervisor
    from runs.pool import GuardedFork

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL keeps its locks in the server: forks need no guard")
    forked, inside, release = [], threading.Event(), threading.Event()

    class Forking:
        def _create_worker_process(self, i):
            forked.append(i)

    class Pool(GuardedFork, Forking):
        pass

    supervisor = Supervisor("host:1:abc", children=list)

    def work():
        inside.set()
        release.wait(30)
        supervisor.stop()

    threading.Thread(target=supervisor._every, args=(lambda: 0, work, "test"), daemon=True).start()
    assert inside.wait(30)
    fork = threading.Thread(target=Pool()._create_worker_process, args=(3,))
    fork.start()
    fork.join(0.5)
    assert forked == []  # still waiting for the supervisor's work to end
    release.set()
    fork.join(30)
    assert forked == [3]


# --- 8. one runner at a time --------------------------------------------------------------------------


def test_it_treats_a_duplicate_doorbell_as_a_no_op(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.rung.append(run.pk)  # the broker delivered the message twice
    assert doorbells.drain() == ["succeeded", "skipped"]
    assert workflows.CALLS["add"] == 1


def test_it_lets_only_one_worker_claim_a_run():
    run = Run.objects.create(workflow="arithmetic", input={"a": 1, "b": 1})
    assert Run.objects.claim(run.pk, "w1", "t1")
    assert not Run.objects.claim(run.pk, "w2", "t2")
    assert Run.objects.get(pk=run.pk).lease_token == "t1"


# --- 9. long waits --------------------------------------------------------------------------------


def test_it_sleeps_for_a_week_without_holding_a_worker(doorbells):
    run = Run.objects.start("sleeper", {})
    assert doorbells.drain() == ["ok/sleep"]
    run.refresh_from_db()
    assert run.status == Status.WAITING
    assert run.wake_at > timezone.now() + timedelta(days=6)
    assert run.lease_owner == ""

    with time_machine.travel(timezone.now() + timedelta(days=3), tick=False):
        assert sweep().woken == 0
    with time_machine.travel(timezone.now() + timedelta(days=7, seconds=1), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == 2
    assert workflows.CALLS["add"] == 2


def test_it_waits_for_a_signal_and_returns_its_payload(doorbells):
    run = Run.objects.start("approval", {})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert (run.status, run.wait_signal) == (Status.WAITING, "approve")

    run.send_signal("approve", {"approved": True, "by": "alice"}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"plan": 42, "outcome": "done", "by": "alice"}
    assert AuditEntry.objects.filter(run=run, action="signal").count() == 1


def test_it_keeps_a_signal_sent_before_the_run_reaches_the_wait(doorbells):
    run = Run.objects.start("approval", {})
    run.send_signal("approve", {"approved": True, "by": "early"}, by="bob")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["by"] == "early"


def test_it_gives_up_waiting_at_the_deadline(doorbells):
    run = Run.objects.start("approval", {"timeout": 3600})
    doorbells.drain()
    with time_machine.travel(timezone.now() + timedelta(minutes=30), tick=False):
        assert sweep().woken == 0
    with time_machine.travel(timezone.now() + timedelta(hours=1, seconds=1), tick=False):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output == {"plan": 42, "outcome": "escalated"}


# --- infrastructure failures ----------------------------------------------------------------


def test_it_gives_a_run_back_uncounted_when_the_database_fails_mid_commit(doorbells, monkeypatch):
    from django.db import OperationalError

    real = Run.record_checkpoint
    failures = {"left": 1}

    def flaky(self, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Run, "record_checkpoint", flaky)
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    assert doorbells.drain() == ["database-error", "succeeded"]
    run.refresh_from_db()
    # Neither failed (not the workflow's fault) nor counted as a lost worker.
    assert run.output == {"total": 2, "doubled": 4, "bumped": 5}
    assert run.recovery_count == 0
    assert AuditEntry.objects.filter(run=run, action="release").count() == 1
    assert AuditEntry.objects.filter(run=run, action="recover").count() == 0
    assert workflows.CALLS["add"] == 2  # the unrecorded step ran again, with the same key
    assert workflows.KEYS["add"][0] == workflows.KEYS["add"][1]


def test_it_dead_letters_nothing_after_many_database_errors(doorbells, monkeypatch):
    from django.db import OperationalError

    real = Run.record_checkpoint
    calls = {"n": 0}

    def every_other(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2:
            raise OperationalError("terminating connection due to administrator command")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Run, "record_checkpoint", every_other)
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.recovery_count == 0


def test_it_runs_sqlite_in_wal_mode():
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("WAL is a SQLite setting")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_it_rings_a_pending_run_again_at_doubling_intervals(doorbells):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.rung.clear()  # the doorbell was lost
    rings = []
    for seconds in range(130):
        with time_machine.travel(start + timedelta(seconds=seconds), tick=False):
            if sweep().redispatched:
                rings.append(seconds)
    assert rings == [16, 32, 64, 128]
    assert doorbells.rung == [run.pk] * 4
    assert doorbells.drain() == ["succeeded", "skipped", "skipped", "skipped"]


def test_a_backlog_on_an_unserved_queue_does_not_keep_served_runs_from_their_doorbells(
    doorbells, settings, monkeypatch
):
    settings.DURABLE_QUEUES = ["durable", "nobody-home"]
    monkeypatch.setattr(recovery, "BATCH", 3)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        for _ in range(5):  # older than the served run, and more than a batch
            Run.objects.start("arithmetic", {"a": 1, "b": 1}, queue="nobody-home")
    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        served = Run.objects.start("arithmetic", {"a": 2, "b": 2})
    doorbells.rung.clear()  # every doorbell was lost
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        WorkerProcess.beat("w:1:a", "w", 1, ["durable"])
        assert sweep().redispatched == 1
    assert doorbells.rung == [served.pk]


# --- liveness: timeouts that stick, stops that notify -----------------------------------------


@pytest.mark.parametrize("bare", [False, True], ids=["except-Exception", "bare-except"])
def test_it_records_a_swallowed_timeout_as_timed_out(doorbells, bare):
    run = Run.objects.start("swallower", {"seconds": 0.6, "bare": bare})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "StepTimeout"
    checkpoint = Checkpoint.objects.get(run=run, position=0)
    assert checkpoint.status == CheckpointStatus.FAILED
    assert checkpoint.error_type == "StepTimeout"
    assert Attempt.objects.get(run=run, position=0).error_type == "StepTimeout"


def test_it_interrupts_a_step_at_the_default_maximum_duration(doorbells, settings):
    settings.DURABLE_MAX_STEP_SECONDS = 0.3
    run = Run.objects.start("napper", {"pause": 5})
    assert doorbells.drain()[0] == "ok/retry"
    attempt = Attempt.objects.get(run=run, position=0)
    assert attempt.error_type == "StepTimeout"
    assert "0.3s" in attempt.error_message


def test_it_hands_a_long_run_back_to_the_queue_at_a_step_boundary(doorbells, settings):
    settings.DURABLE_DELIVERY_SECONDS = 0.01
    run = Run.objects.start("naps", {"steps": 4, "pause": 0.02})
    outcomes = doorbells.drain()
    assert outcomes == ["handed-back", "handed-back", "handed-back", "succeeded"]
    run.refresh_from_db()
    assert run.claims == 4
    assert workflows.CALLS["nap"] == 4  # every step once, whoever delivered it


def test_a_cancel_seen_at_a_checkpoint_wakes_the_parent_and_frees_the_slot_at_once(doorbells):
    parent = Run.objects.create(
        workflow="parent", status=Status.WAITING, wait_kind=WaitKind.CHILD, wait_position=0
    )
    child = Run.objects.create(workflow="limited", parent=parent, parent_position=0)
    assert Run.objects.claim(child.pk, "w", "t")
    child.cancel(by="operator")
    queued = Run.objects.create(workflow="limited", status=Status.QUEUED)
    outcome = child.record_checkpoint(
        "t",
        position=0,
        name="add",
        status=CheckpointStatus.SUCCEEDED,
        output=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    assert outcome == "cancelled"
    assert Run.objects.get(pk=parent.pk).status == Status.PENDING  # woken now, not by a sweep
    assert Run.objects.get(pk=queued.pk).status == Status.PENDING  # the slot went to the next in line
    assert set(doorbells.rung) == {parent.pk, queued.pk}


def test_terminate_is_only_for_running_runs_and_is_audited(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    with pytest.raises(InvalidOperation, match="only a running run can be terminated"):
        run.terminate(by="operator")
    doorbells.rung.clear()
    assert Run.objects.claim(run.pk, "w", "t")
    assert run.terminate(by="operator", reason="hung") == "terminate requested"
    assert AuditEntry.objects.filter(run=run, action="terminate", reason="hung").exists()
    # The holder is gone: the sweep ends the run failed, resumable, instead of dispatching it.
    lapse_leases()
    sweep()
    run.refresh_from_db()
    assert (run.status, run.error_type) == (Status.FAILED, "Terminated")
    run.resume(by="operator")
    assert doorbells.drain()[-1] == "succeeded"


def test_each_claim_takes_its_own_token_not_the_message_id(doorbells, monkeypatch):
    """A redelivered copy of a message must not act under the claim it made before."""
    from runs.tasks import execute

    run = Run.objects.start("sleeper", {})
    doorbells.rung.clear()
    tokens = []
    real_claim = Run.objects.claimed

    def recording_claim(run_id, owner, token):
        tokens.append(token)
        return real_claim(run_id, owner, token)

    monkeypatch.setattr(Run.objects, "claimed", recording_claim)
    execute.apply(args=(run.pk,), task_id="message-1")
    monkeypatch.undo()
    assert tokens and tokens[0] != "message-1"
    assert Run.objects.get(pk=run.pk).status == Status.WAITING
    Run.objects.filter(pk=run.pk).update(status=Status.PENDING)
    assert Run.objects.claim(run.pk, "w", "claim-2")
    assert Run.objects.get(pk=run.pk).claims == 2
    # The same message delivered again claims nothing, and the live claim keeps its token.
    assert execute.apply(args=(run.pk,), task_id="message-1").get() == "skipped"
    assert Run.objects.get(pk=run.pk).lease_token == "claim-2"


def test_after_a_failed_sweep_the_next_ones_wait_a_lease_before_calling_anyone_dead(monkeypatch, settings):
    from runs import recovery

    settings.DURABLE_LEASE_TIMEOUT, settings.DURABLE_SWEEP_INTERVAL = 2.0, 0.5
    clock = {"now": 100.0}
    monkeypatch.setattr(recovery.time, "monotonic", lambda: clock["now"])
    steadiness = recovery.Steadiness()
    assert steadiness.steady()  # a process that has not swept yet has seen no gap
    steadiness.completed()
    clock["now"] += 0.5
    assert steadiness.steady()

    steadiness.broken()  # the database failed a sweep
    clock["now"] += 5
    assert not steadiness.steady()
    steadiness.completed()
    for _ in range(3):  # sweeping again, but not yet for a lease timeout
        clock["now"] += 0.5
        assert not steadiness.steady()
        steadiness.completed()
    clock["now"] += 0.5
    assert steadiness.steady()
