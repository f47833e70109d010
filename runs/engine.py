"""Executes workflow code durably: claim, replay recorded steps, checkpoint new ones.

One task executes consecutive steps of a run, one commit per step, until the
workflow returns, fails, or has to wait (sleep, retry backoff, signal); waiting
releases the worker and the run is dispatched again when it is due. All database
writes go through methods of runs.models.Run. An `async def` workflow is driven on the
same thread through the same calls (runs.asyncflow); async steps run on the process's
event loop (steps.eventloop).
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import Error as DatabaseFailure
from django.utils import timezone

from runs import liveness, stepinputs, tracing
from runs.asyncflow import call_workflow
from runs.models import Run, WaitKind, ensure_json
from runs.redaction import redact
from runs.workflow import (
    NonDeterminismError,
    StepDefinition,
    StepFailed,
    StepInfo,
    UnknownWorkflow,
    _current_step,
    call,
    patch_marker,
    pinned_elsewhere,
    registry,
    step_definition,
)
from steps.models import Attempt, BranchStatus, Checkpoint, CheckpointStatus
from steps.retry import StepOutputError
from steps.timeouts import call_with_timeout, step_time_limit

log = logging.getLogger(__name__)

MAX_MESSAGE = 10_000
MAX_TRACEBACK = 50_000


class _Stop(BaseException):
    """Unwinds workflow code when the run leaves this worker (wait, cancel, lost lease).

    A BaseException so that `except Exception` in workflow code does not swallow it.
    """

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


def describe(exc: BaseException) -> dict[str, str]:
    return {
        "error_type": type(exc).__qualname__[:200],
        "error_message": redact(str(exc))[:MAX_MESSAGE],
        "error_traceback": redact("".join(traceback.format_exception(exc)))[-MAX_TRACEBACK:],
    }


class RunContext:
    """What a workflow function receives: its run, and the durable calls it may make."""

    def __init__(self, run: Run, token: str, recorded: list[Checkpoint], executor=None):
        self._run = run
        self._token = token
        self._executor = executor  # runs.executor: checkpoints go through its group committer
        self._recorded = {checkpoint.position: checkpoint for checkpoint in recorded}
        self._position = 0
        self._first_fresh = run.steps_done
        # This delivery hands the run back at the first step boundary past its budget.
        self._hand_back_at = time.monotonic() + settings.DURABLE_DELIVERY_SECONDS
        self.stopped: _Stop | None = None
        self.diverged: NonDeterminismError | None = None

    @property
    def run_id(self) -> int:
        return self._run.pk

    @property
    def input(self) -> Any:
        return self._run.input

    @property
    def position(self) -> int:
        """The position the next durable call will take."""
        return self._position

    # --- durable calls ------------------------------------------------------------

    def step(self, fn, *args, **kwargs) -> Any:
        """Run fn(*args, **kwargs) as a checkpointed step and return its JSON output."""
        definition = step_definition(fn)
        position = self._take_position()
        recorded = self._recorded_at(position, definition.name)
        if recorded is not None:
            return self._replayed(recorded)
        return self._execute(definition, position, args, kwargs)

    def sleep(self, duration: float | timedelta) -> None:
        """Pause the run; the worker is released and the run wakes when the time has come."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        position = self._take_position()
        recorded = self._recorded_at(position, "sleep")
        now = timezone.now()
        if recorded is None:
            until = now + timedelta(seconds=max(seconds, 0))
            self._checkpoint(position, "sleep", output={"until": until.isoformat()}, started_at=now)
        else:
            until = datetime.fromisoformat(recorded.output["until"])
        if until > timezone.now():
            self._suspend(WaitKind.SLEEP, position, wake_at=until)

    def wait_for_signal(
        self, name: str, timeout: float | timedelta | None = None, default: Any = None, *, prompt: str = ""
    ) -> Any:
        """Wait for the named signal and return its payload, or `default` after `timeout`.

        A signal sent before the run gets here is kept and consumed here. `prompt` says in a
        short text what a person is asked; it is shown with the wait and never checkpointed,
        so changing it does not change a replay.
        """
        step_name = f"signal:{name}"
        position = self._take_position()
        recorded = self._recorded_at(position, step_name)
        if recorded is not None:
            return default if recorded.output.get("timed_out") else recorded.output.get("payload")

        started = timezone.now()
        outcome, payload = self._db(self._run.take_signal, self._token, name, position, started_at=started)
        if outcome == "taken":
            return payload
        if outcome != "none":
            self._stop(outcome)

        run = self._run
        already_waiting = run.wait_kind == WaitKind.SIGNAL and run.wait_position == position
        if already_waiting and run.wake_at and run.wake_at <= timezone.now():
            self._checkpoint(position, step_name, output={"timed_out": True}, started_at=started)
            return default
        if already_waiting:
            deadline = run.wake_at
        elif timeout is None:
            deadline = None
        else:
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
            deadline = started + timedelta(seconds=seconds)
        self._suspend(WaitKind.SIGNAL, position, wake_at=deadline, signal=name, prompt=prompt)

    def patched(self, change_id: str) -> bool:
        """True where this run reaches this point under code that has the change, False for
        runs that were recorded past it before the change: `if ctx.patched("x"): new path`.

        Reaching it fresh records a marker checkpoint here, so a replay answers True again;
        a run whose recorded step here is not that marker went the old way and takes no
        position (its recorded steps still line up).
        """
        name = patch_marker(change_id)
        recorded = self._recorded.get(self._position)
        if recorded is not None and recorded.name != name:
            return False
        position = self._take_position()
        if recorded is None:
            self._checkpoint(position, name, output=True, started_at=timezone.now())
        return True

    def deprecate_patch(self, change_id: str) -> None:
        """The change's old path is gone: keep replaying runs that recorded its marker.

        Replace `if ctx.patched("x"):` by this once no run recorded before the change is in
        flight; remove it once no run that recorded the marker is (`runs check` says which).
        """
        name = patch_marker(change_id)
        recorded = self._recorded.get(self._position)
        if recorded is not None and recorded.name == name:
            self._take_position()

    def parallel(self, calls) -> list:
        """Run several steps at once, on any workers, and return their outputs in call order.

        Build the calls with `runs.workflow.call(fn, *args, **kwargs)`. The run is released
        while the branches execute. If a branch fails for good the group fails with
        StepFailed (catchable, and replayed as the same error); the other branches'
        results stay recorded.
        """
        calls = list(calls)
        if not calls:
            return []
        name = f"parallel:{len(calls)}"
        position = self._take_position()
        recorded = self._recorded_at(position, name)
        if recorded is not None:
            return self._replayed(recorded)
        specs = []
        for index, step_call in enumerate(calls):
            try:
                args = ensure_json(list(step_call.args), f"the arguments of branch {index}")
                kwargs = ensure_json(step_call.kwargs, f"the keyword arguments of branch {index}")
            except ValueError as exc:
                raise TypeError(str(exc)) from None
            specs.append(
                dict(
                    name=step_call.definition.name,
                    target=step_call.definition.target,
                    args=args,
                    kwargs=kwargs,
                )
            )
        outcome, value = self._db(self._run.fan_out, self._token, position, specs)
        if outcome == "diverged":
            self.diverged = NonDeterminismError(value)
            raise self.diverged
        if outcome == "waiting":
            self._stop("ok/branches")
        if outcome != "finished":
            self._stop(outcome)
        return self._settle_group(position, name, value)

    def map(self, fn, items) -> list:
        """`parallel` over one step function and a list of inputs."""
        return self.parallel([call(fn, item) for item in items])

    def child(self, workflow: str, input: Any = None) -> Any:
        """Start a run of another workflow as this run's child and return its output.

        The child is started once (replay finds it again) and this run is released
        while it runs. A child that fails, is cancelled or dead-lettered raises StepFailed.
        """
        return self._child(workflow, input, wait=True)

    def start_child(self, workflow: str, input: Any = None) -> int:
        """Start a child run and go on without waiting; returns its run id."""
        return self._child(workflow, input, wait=False)["run_id"]

    def _child(self, workflow: str, input: Any, wait: bool):
        name = f"child:{workflow}"
        position = self._take_position()
        recorded = self._recorded_at(position, name)
        if recorded is not None:
            return self._replayed(recorded)
        outcome, value = self._db(
            self._run.child_at, self._token, position, workflow, input, wait, started_at=timezone.now()
        )
        if outcome == "ok":
            return value
        if outcome == "failed":
            raise StepFailed(
                name, position, value["error_type"], value["error_message"], value["error_traceback"]
            )
        self._stop("ok/child" if outcome == "waiting" else outcome)

    # --- machinery ------------------------------------------------------------------

    def _replayed(self, recorded: Checkpoint) -> Any:
        if recorded.status == CheckpointStatus.FAILED:
            raise StepFailed(
                recorded.name,
                recorded.position,
                recorded.error_type,
                recorded.error_message,
                recorded.error_traceback,
            )
        return recorded.output

    def _settle_group(self, position: int, name: str, branches) -> list:
        """Every branch is done: checkpoint the group as one step, in call order."""
        started = min((b.started_at for b in branches if b.started_at), default=timezone.now())
        failed = [b for b in branches if b.status == BranchStatus.FAILED]
        if not failed:
            outputs = [b.output for b in branches]
            self._checkpoint(
                position, name, output=outputs, started_at=started, meta={"branches": len(branches)}
            )
            return outputs
        first = failed[0]
        error = dict(
            error_type=first.error_type,
            error_message=f"branch {first.index} ({first.name}) failed: {first.error_message}",
            error_traceback=first.error_traceback,
        )
        outcome = self._db(
            self._run.record_checkpoint,
            self._token,
            position=position,
            name=name,
            status=CheckpointStatus.FAILED,
            epoch=self._run.epoch,
            started_at=started,
            finished_at=timezone.now(),
            meta={"branches": len(branches), "failed": [b.index for b in failed]},
            **error,
        )
        if outcome != "ok":
            self._stop(outcome)
        raise StepFailed(
            name, position, error["error_type"], error["error_message"], error["error_traceback"]
        )

    def _take_position(self) -> int:
        if self.stopped is not None:
            raise self.stopped
        if self.diverged is not None:
            raise self.diverged
        position = self._position
        self._position += 1
        return position

    def _recorded_at(self, position: int, name: str) -> Checkpoint | None:
        recorded = self._recorded.get(position)
        if recorded is not None and recorded.name != name:
            self.diverged = NonDeterminismError(
                f"Replay of run {self.run_id} diverged at position {position}: the code now calls "
                f"step {name!r} but the recorded step there is {recorded.name!r}."
            )
            raise self.diverged
        return recorded

    def _execute(self, definition: StepDefinition, position: int, args: tuple, kwargs: dict) -> Any:
        if time.monotonic() > self._hand_back_at or self._draining():
            # Bounded deliveries: none outlives a broker's redelivery or consumer timeout,
            # and long runs take turns with the others on the queue. A pool process that
            # is shutting down hands its runs back the same way.
            self._stop(self._db(self._run.hand_back, self._token))
        if definition.rate_limit is not None:
            retry_at = self._db(definition.rate_limit.acquire)
            if retry_at is not None:  # waits without holding a worker, and is not an attempt
                self._suspend(WaitKind.RATE, position, wake_at=retry_at)
        attempt = 1
        if position == self._first_fresh and not _fresh(self._run):
            attempt += self._db(self._run.failed_attempts_at, position)
            if attempt > definition.retry.max_attempts:
                self._attempts_spent(definition, position, attempt - 1)
        started = timezone.now()
        called_with = stepinputs.record(args, kwargs)
        info = StepInfo(
            run_id=self.run_id,
            name=definition.name,
            position=position,
            attempt=attempt,
            idempotency_key=self._run.step_idempotency_key(position),
        )
        traced = tracing.attempt(definition.fn, info)
        reset = _current_step.set(info)
        try:
            value = call_with_timeout(
                traced, args, kwargs, step_time_limit(definition.timeout), own=bool(definition.timeout)
            )
            try:
                value = ensure_json(value, f"the output of step {definition.name!r}")
            except ValueError as exc:
                raise StepOutputError(str(exc)) from None
        except Exception as exc:
            self._failed(definition, position, attempt, started, exc, called_with)
        finally:
            _current_step.reset(reset)
        self._checkpoint(
            position,
            definition.name,
            output=value,
            started_at=started,
            attempts=attempt,
            meta=info.meta or None,
            input=called_with,
        )
        return value

    def _draining(self) -> bool:
        return self._executor is not None and self._executor.draining.is_set()

    def _attempts_spent(self, definition: StepDefinition, position: int, attempts: int):
        """Its attempts ran out outside this process (interrupted from outside): fail it now."""
        last = self._db(Attempt.objects.live().filter(run_id=self.run_id, position=position).last)
        error = dict(error_type=last.error_type, error_message=last.error_message, error_traceback="")
        outcome = self._db(
            self._run.record_checkpoint,
            self._token,
            position=position,
            name=definition.name,
            status=CheckpointStatus.FAILED,
            attempts=attempts,
            epoch=self._run.epoch,
            started_at=last.started_at,
            finished_at=last.finished_at,
            **error,
        )
        if outcome != "ok":
            self._stop(outcome)
        raise StepFailed(definition.name, position, error["error_type"], error["error_message"], "")

    def _failed(
        self, definition: StepDefinition, position: int, attempt: int, started, exc: Exception, called_with
    ):
        error = describe(exc)
        record = dict(
            position=position,
            name=definition.name,
            number=attempt,
            max_attempts=definition.retry.max_attempts,
            started_at=started,
            finished_at=timezone.now(),
            **error,
        )
        policy = definition.retry
        if policy.should_retry(attempt, exc):
            retry_at = timezone.now() + timedelta(seconds=policy.delay(attempt))
            log.info(
                "run %s step %s attempt %s failed (%s); retry at %s",
                self.run_id,
                definition.name,
                attempt,
                error["error_type"],
                retry_at,
            )
            self._stop(self._db(self._run.record_failed_attempt, self._token, record, retry_at) + "/retry")
        outcome = self._db(
            self._run.record_final_failure,
            self._token,
            record,
            position=position,
            name=definition.name,
            status=CheckpointStatus.FAILED,
            attempts=attempt,
            epoch=self._run.epoch,
            started_at=started,
            finished_at=record["finished_at"],
            input=called_with,
            **error,
        )
        if outcome != "ok":
            self._stop(outcome)
        raise StepFailed(
            definition.name, position, error["error_type"], error["error_message"], error["error_traceback"]
        ) from exc

    def _checkpoint(
        self,
        position: int,
        name: str,
        *,
        output: Any,
        started_at,
        attempts: int = 1,
        meta: dict | None = None,
        input: dict | None = None,
    ) -> None:
        outcome = self._db(
            committed(self._executor, self._run.record_checkpoint),
            self._token,
            position=position,
            name=name,
            status=CheckpointStatus.SUCCEEDED,
            output=output,
            attempts=attempts,
            epoch=self._run.epoch,
            started_at=started_at,
            finished_at=timezone.now(),
            meta=meta,
            input=input,
        )
        if outcome != "ok":
            self._stop(outcome)

    def _suspend(self, kind: str, position: int, *, wake_at=None, signal: str = "", prompt: str = ""):
        outcome = self._db(
            self._run.suspend,
            self._token,
            kind,
            position=position,
            wake_at=wake_at,
            signal=signal,
            prompt=prompt,
        )
        self._stop(f"{outcome}/{kind}" if outcome == "ok" else outcome)

    def _db(self, method, *args, **kwargs):
        """Call a model write; a database failure stops the run here, it does not fail it.

        execute_run then gives the run back for dispatch once the database answers again.
        """
        try:
            return method(*args, **kwargs)
        except DatabaseFailure:
            log.warning(
                "run %s: database error while recording; leaving it for recovery", self.run_id, exc_info=True
            )
            self._stop("database-error")

    def _stop(self, outcome: str):
        if outcome.startswith("lost"):
            log.info("run %s: its lease was taken back; this worker's write was refused", self.run_id)
        self.stopped = _Stop(outcome)
        raise self.stopped


def execute_run(run_id: int, token: str | None = None, executor=None) -> str:
    """Advance one run as far as it will go. Returns what happened, for logs and tests.

    `executor` (runs.executor) when this is one of a pool process's run threads.
    """
    token = token or uuid.uuid4().hex  # each claim its own token
    run = committed(executor, Run.objects.claimed)(run_id, liveness.process_name(), token)
    if run is None:
        return "skipped"  # already claimed, finished, or cancelled: a duplicate doorbell
    try:
        outcome = tracing.delivery(_advance, run, token, executor)
    except DatabaseFailure:
        log.warning("run %s: database error; giving it back", run_id, exc_info=True)
        outcome = "database-error"
    if outcome == "database-error":
        # Not the workflow's fault, and not a lost worker: dispatch it again, uncounted.
        liveness.give_back(run_id, token, "a database error stopped its worker")
    return outcome


def _advance(run: Run, token: str, executor=None) -> str:
    try:
        definition = registry.get(run.workflow)
    except UnknownWorkflow as exc:
        run.finish(token, error=describe(exc))
        return "failed"

    if pinned_elsewhere(run.code_version, definition.version):
        return _leave_for_its_version(run, token, definition.version)
    # Read through the committer's connection too: a run thread that only claims,
    # replays and checkpoints opens no database connection of its own.
    recorded = [] if _fresh(run) else committed(executor, _recorded)(run)
    ctx = RunContext(run, token, recorded, executor)
    try:
        output = call_workflow(definition.fn, ctx, run.input)
    except _Stop as stop:
        return stop.outcome
    except Exception as exc:
        if ctx.stopped is not None:  # workflow code swallowed our stop and raised something else
            return ctx.stopped.outcome
        return _fail(run, token, ctx.diverged or exc)
    if ctx.stopped is not None:
        return ctx.stopped.outcome
    if ctx.diverged is not None:
        return _fail(run, token, ctx.diverged)
    try:
        output = ensure_json(output, f"the output of workflow {run.workflow!r}")
    except ValueError as exc:
        return _fail(run, token, exc)
    return "succeeded" if committed(executor, run.finish)(token, output=output) else "lost"


def committed(executor, method):
    """The write method, committed together with other runs' writes when `executor` is given."""
    if executor is None:
        return method
    return functools.partial(executor.committer.call, method)


def _recorded(run: Run) -> list[Checkpoint]:
    return list(run.live_checkpoints())


def _fresh(run: Run) -> bool:
    """Claimed for the first time, at its start: no checkpoint or attempt can exist yet,
    so the queries that would look for them are skipped (two round trips a run)."""
    return run.claims == 1 and run.steps_done == 0


def _leave_for_its_version(run: Run, token: str, here: str) -> str:
    """Not this worker's version: wait, unreplayed, and ring again on the run's queue later."""
    log.info("run %s is pinned to version %s; this worker has %s", run.pk, run.code_version, here)
    wake_at = timezone.now() + timedelta(seconds=settings.DURABLE_PINNED_RETRY_SECONDS)
    outcome = run.suspend(token, WaitKind.VERSION, position=run.steps_done, wake_at=wake_at)
    return f"{outcome}/{WaitKind.VERSION}" if outcome == "ok" else outcome


def _fail(run: Run, token: str, exc: BaseException) -> str:
    error = describe(exc)
    if isinstance(exc, StepFailed):
        error.update(
            error_type=exc.error_type,
            error_position=exc.position,
            error_message=f"step {exc.step_name!r} failed: {exc.error_message}"[:MAX_MESSAGE],
            error_traceback=exc.traceback or error["error_traceback"],
        )
    log.info("run %s failed: %s: %s", run.pk, error["error_type"], error["error_message"])
    return "failed" if run.finish(token, error=error) else "lost"
