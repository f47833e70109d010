"""Export a run as one JSON document, and replay current workflow code against it.

`export_run(run)` writes down everything recorded about a run: its input and
outcome, the workflow's name and code version, every checkpoint (superseded ones
too) with the failed attempts that led to it, and its signals.

`replay(document)` calls the workflow function as it is deployed *now* with a
`ReplayContext` instead of the engine's `RunContext`. Every durable call is
answered from the document: recorded outputs are returned, recorded failures are
raised again as `StepFailed`, and nothing else happens. No step function is
called and the database is never touched, so a developer can replay a production
run on a laptop. The report says whether the code reproduces the recorded run,
where it now diverges (position, recorded step, called step), or what it would
do next once the recorded steps are used up.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from django.utils import timezone

from runs import jsoninput, stepinputs
from runs.asyncflow import call_workflow
from runs.workflow import PATCH_PREFIX, StepFailed, UnknownWorkflow, patch_marker, registry, step_definition
from steps.models import CheckpointStatus

FORMAT = "durable-run-export"
FORMAT_VERSION = 1
# Run columns that only matter to the worker holding the run at that moment.
RUN_FIELDS_LEFT_OUT = ("lease_owner", "lease_token")
OUTCOMES = {
    "clean": "reproduces the recorded run",
    "continues": "replays every recorded step; the run would go on from there",
    "diverged": "calls a different step than the one recorded",
    "differs": "replays every recorded step but ends differently",
    "error": "cannot be replayed",
}


CHECKPOINT_STATUSES = frozenset(CheckpointStatus.values)  # computed once: checked per checkpoint


class ExportError(ValueError):
    """A file is not a run export this code can read."""


# --- export ------------------------------------------------------------------------


def export_run(run) -> dict[str, Any]:
    """Everything recorded about `run`, as one JSON-ready document."""
    checkpoints = list(run.checkpoints.order_by("position", "id"))
    attempts = list(run.attempts.order_by("position", "id"))
    open_attempts = attach_attempts(checkpoints, attempts)
    try:
        deployed = registry.get(run.workflow).version
    except UnknownWorkflow:
        deployed = None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "deployed_version": deployed,
        "run": _row(run, leave_out=RUN_FIELDS_LEFT_OUT),
        "checkpoints": [
            {**_row(c, leave_out=("run_id",)), "failed_attempts": [_row(a) for a in c.failed_attempts]}
            for c in checkpoints
        ],
        # Failed attempts of a step that has no checkpoint yet (backing off before a retry).
        "open_attempts": [_row(a) for a in open_attempts],
        "signals": [_row(s, leave_out=("run_id",)) for s in run.signals.order_by("id")],
    }


def export_json(run) -> str:
    # Indented; compact when a value is nested too deeply to indent (a row older than
    # the depth limit): still the same document.
    return jsoninput.render(export_run(run), indent=2)[0]


def attach_attempts(checkpoints: list, attempts: Iterable) -> list:
    """Give each checkpoint the failed attempts that led to it; return the attempts left over.

    A live attempt belongs to the live checkpoint at its position. A superseded one
    belongs to the checkpoint that the same operator action superseded there (resume
    and retry supersede a step's checkpoint and its attempts together), found by
    timestamps taken in the same transaction rather than by attempt times, which
    come from different workers' clocks. Attempts of a step without a checkpoint
    (one backing off before its next attempt) are left over.
    """
    live: dict[int, Any] = {}
    superseded = defaultdict(list)
    for checkpoint in checkpoints:
        checkpoint.failed_attempts = []
        if checkpoint.superseded_at is None:
            live[checkpoint.position] = checkpoint
        else:
            superseded[checkpoint.position].append(checkpoint)
    left_over = []
    for attempt in sorted(attempts, key=lambda a: a.pk):
        if attempt.superseded_at is None:
            owner = live.get(attempt.position)
        else:
            earlier = [c for c in superseded[attempt.position] if c.superseded_at <= attempt.superseded_at]
            owner = max(earlier, key=lambda c: c.superseded_at, default=None)
        (owner.failed_attempts if owner else left_over).append(attempt)
    return left_over


def _row(obj, leave_out: tuple[str, ...] = ("run_id",)) -> dict[str, Any]:
    row = {}
    for field in obj._meta.concrete_fields:
        if field.attname in leave_out:
            continue
        value = getattr(obj, field.attname)
        row[field.attname] = value.isoformat() if isinstance(value, datetime) else value
    return row


# --- loading -----------------------------------------------------------------------


def load_export(source: str | Path | IO[str]) -> dict[str, Any]:
    """Read and check an export file (a path or an open file); raise ExportError if unusable."""
    try:
        if hasattr(source, "read"):
            document = json.load(source)
        else:
            with open(source, encoding="utf-8") as file:
                document = json.load(file)
    except OSError as exc:
        raise ExportError(f"cannot read {source}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ExportError(f"{getattr(source, 'name', source)} is not JSON: {exc}") from None
    check_export(document)
    return document


def check_export(document: Any) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ExportError(f'not a run export (expected an object with "format": "{FORMAT}")')
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(
            f"export format version {version!r} is newer than this code reads ({FORMAT_VERSION})"
        )
    run = document.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("workflow"), str):
        raise ExportError('the export has no "run" with a "workflow" name')
    checkpoints = document.get("checkpoints")
    if not isinstance(checkpoints, list):
        raise ExportError('the export has no "checkpoints" list')
    for index, checkpoint in enumerate(checkpoints):
        if not (
            isinstance(checkpoint, dict)
            and isinstance(checkpoint.get("position"), int)
            and isinstance(checkpoint.get("name"), str)
            and checkpoint.get("status") in CHECKPOINT_STATUSES
        ):
            raise ExportError(f"checkpoint {index} needs an integer position, a name and a status")


# --- replay ------------------------------------------------------------------------


@dataclass
class ReplayReport:
    """What replaying an export against the current code found."""

    run_id: int | None
    workflow: str
    run_status: str
    recorded_version: str
    current_version: str | None
    recorded_steps: int
    outcome: str = ""  # a key of OUTCOMES
    message: str = ""
    position: int | None = None  # where the code diverged or stopped
    expected: str | None = None  # the recorded step there
    called: str | None = None  # what the code does there instead
    replayed: int = 0  # recorded steps answered from the export
    output: Any = None  # what the code returned, if it did
    # Recorded steps the code now calls with other arguments: (position, step, differences).
    argument_changes: list = dataclass_field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the current code is safe for this run: nothing diverged or ended differently."""
        return self.outcome in ("clean", "continues")

    @property
    def version_changed(self) -> bool:
        return self.current_version is not None and self.current_version != self.recorded_version

    def __str__(self) -> str:
        version = f"code version {self.recorded_version or '(none recorded)'}"
        if self.current_version is None:
            version += ", workflow not deployed"
        elif self.version_changed:
            version += f", deployed now: {self.current_version}"
        else:
            version += " (unchanged)"
        lines = [
            f"run {self.run_id} of {self.workflow!r} ({self.run_status}), {version}",
            f"replayed {self.replayed} of {self.recorded_steps} recorded steps",
            f"{self.outcome.upper()}: {self.message}",
        ]
        for position, name, changes in self.argument_changes:
            lines.append(f"  step {name!r} at position {position} is now called with other arguments:")
            lines.extend(f"    {change}" for change in changes)
        return "\n".join(lines)


class ReplayStop(BaseException):
    """Unwinds workflow code when replay has to stop.

    A BaseException, like the engine's own stop, so `except Exception` in workflow
    code cannot swallow it.
    """

    def __init__(self, outcome: str, message: str, position: int, expected=None, called=None):
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.position = position
        self.expected = expected
        self.called = called


class ReplayContext:
    """Stands in for runs.engine.RunContext: every durable call is answered from an export."""

    def __init__(self, document: dict[str, Any]):
        self._run = document["run"]
        self._recorded = {c["position"]: c for c in document["checkpoints"] if c.get("superseded_at") is None}
        self._signals = document.get("signals") or []
        exported_at = document.get("exported_at")
        self._now = datetime.fromisoformat(exported_at) if exported_at else timezone.now()
        self._position = 0
        self.replayed = 0
        self.stopped: ReplayStop | None = None
        self.argument_changes: list[tuple[int, str, list[str]]] = []

    @property
    def run_id(self) -> int | None:
        return self._run.get("id")

    @property
    def input(self) -> Any:
        return copy.deepcopy(self._run.get("input"))

    @property
    def position(self) -> int:
        return self._position

    # --- the durable calls of RunContext -----------------------------------------------

    def step(self, fn, *args, **kwargs) -> Any:
        definition = step_definition(fn)
        name = definition.name
        position = self._take_position()
        recorded = self._recorded_at(position, name)
        if recorded is None:
            self._stop(
                "continues", position, name, f"would execute step {name!r} at position {position} next"
            )
        changes = stepinputs.differences(recorded.get("input"), args, kwargs)
        former = definition.former_call
        if changes and former and not stepinputs.differences(recorded.get("input"), *former(args, kwargs)):
            changes = []  # recorded in the arguments' earlier format, and the same call
        if changes:
            self.argument_changes.append((position, name, changes))
        return self._replayed(recorded)

    def patched(self, change_id: str) -> bool:
        # As RunContext.patched: a recorded marker answers True, another recorded step
        # False (taking no position); past the recorded steps the run would take the new path.
        name = patch_marker(change_id)
        recorded = self._recorded.get(self._position)
        if recorded is not None and recorded["name"] != name:
            return False
        position = self._take_position()
        if recorded is None:
            self._stop(
                "continues",
                position,
                name,
                f"would take patch {change_id!r}'s new path at position {position} next",
            )
        self.replayed += 1
        return True

    def deprecate_patch(self, change_id: str) -> None:
        name = patch_marker(change_id)
        recorded = self._recorded.get(self._position)
        if recorded is not None and recorded["name"] == name:
            self._take_position()
            self.replayed += 1

    def sleep(self, duration: float | timedelta) -> None:
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        position = self._take_position()
        recorded = self._recorded_at(position, "sleep")
        if recorded is None:
            self._stop(
                "continues", position, "sleep", f"would sleep {seconds:g}s at position {position} next"
            )
        self.replayed += 1
        until = datetime.fromisoformat(recorded["output"]["until"])
        if until > self._now:  # as the engine does: the run was still asleep when exported
            self._stop(
                "continues", position, "sleep", f"sleeps at position {position} until {until.isoformat()}"
            )

    def wait_for_signal(
        self, name: str, timeout: float | timedelta | None = None, default: Any = None, *, prompt: str = ""
    ) -> Any:
        # The prompt is shown with a live wait only: nothing recorded depends on it.
        step_name = f"signal:{name}"
        position = self._take_position()
        recorded = self._recorded_at(position, step_name)
        if recorded is None:
            waiting = [s for s in self._signals if s.get("name") == name and not s.get("consumed_at")]
            already = " (a signal of that name has already arrived)" if waiting else ""
            self._stop(
                "continues",
                position,
                step_name,
                f"would wait for signal {name!r} at position {position} next{already}",
            )
        self.replayed += 1
        output = recorded.get("output") or {}
        return copy.deepcopy(default if output.get("timed_out") else output.get("payload"))

    def parallel(self, calls) -> list:
        calls = list(calls)
        if not calls:
            return []
        return self._group([call.definition.name for call in calls])

    def map(self, fn, items) -> list:
        items = list(items)
        if not items:
            return []
        return self._group([step_definition(fn).name] * len(items))

    def child(self, workflow: str, input: Any = None) -> Any:
        return self._child(workflow, wait=True)

    def start_child(self, workflow: str, input: Any = None) -> int:
        return self._child(workflow, wait=False)["run_id"]

    # --- machinery ------------------------------------------------------------------

    def _group(self, names: list[str]) -> list:
        name = f"parallel:{len(names)}"
        position = self._take_position()
        recorded = self._recorded_at(position, name)
        if recorded is None:
            listed = ", ".join(sorted(set(names)))
            self._stop(
                "continues",
                position,
                name,
                f"would run {len(names)} steps in parallel ({listed}) at position {position} next",
            )
        return self._replayed(recorded)

    def _child(self, workflow: str, wait: bool):
        name = f"child:{workflow}"
        position = self._take_position()
        recorded = self._recorded_at(position, name)
        if recorded is None:
            then = "and wait for it" if wait else "without waiting"
            self._stop(
                "continues",
                position,
                name,
                f"would start a child run of {workflow!r} at position {position} next, {then}",
            )
        return self._replayed(recorded)

    def _take_position(self) -> int:
        if self.stopped is not None:  # workflow code caught our stop and went on
            raise self.stopped
        position = self._position
        self._position += 1
        return position

    def _recorded_at(self, position: int, name: str) -> dict | None:
        recorded = self._recorded.get(position)
        if recorded is not None and recorded["name"] != name:
            hint = ""
            if recorded["name"].startswith(PATCH_PREFIX):
                change_id = recorded["name"][len(PATCH_PREFIX) :]
                hint = (
                    f" (keep ctx.deprecate_patch({change_id!r}) there while runs that took the patch"
                    " are in flight)"
                )
            self._stop(
                "diverged",
                position,
                name,
                f"at position {position} the code now calls {name!r} but the recorded step there is "
                f"{recorded['name']!r}{hint}",
                expected=recorded["name"],
            )
        return recorded

    def _replayed(self, recorded: dict) -> Any:
        self.replayed += 1
        if recorded["status"] == CheckpointStatus.FAILED:
            raise StepFailed(
                recorded["name"],
                recorded["position"],
                recorded.get("error_type", ""),
                recorded.get("error_message", ""),
                recorded.get("error_traceback", ""),
            )
        return copy.deepcopy(recorded.get("output"))

    def _stop(self, outcome: str, position: int, called: str, message: str, expected=None):
        self.stopped = ReplayStop(outcome, message, position, expected=expected, called=called)
        raise self.stopped

    def __getattr__(self, name: str):
        raise AttributeError(f"replay does not support ctx.{name}() yet")


def replay(document: dict[str, Any]) -> ReplayReport:
    """Run the current code of the export's workflow against its recorded checkpoints."""
    check_export(document)
    run = document["run"]
    live = [c for c in document["checkpoints"] if c.get("superseded_at") is None]
    report = ReplayReport(
        run_id=run.get("id"),
        workflow=run["workflow"],
        run_status=run.get("status", ""),
        recorded_version=run.get("code_version") or "",
        current_version=None,
        recorded_steps=len(live),
    )
    try:
        definition = registry.get(run["workflow"])
    except UnknownWorkflow as exc:
        return _conclude(report, "error", str(exc))
    report.current_version = definition.version
    ctx = ReplayContext(document)
    report.argument_changes = ctx.argument_changes  # filled in as the replay goes
    try:
        output = call_workflow(definition.fn, ctx, copy.deepcopy(run.get("input")))
    except ReplayStop as stop:
        return _stopped(report, ctx, stop)
    except Exception as exc:
        if ctx.stopped is not None:  # workflow code swallowed our stop and raised something else
            return _stopped(report, ctx, ctx.stopped)
        return _ended(report, ctx, live, raised=exc)
    if ctx.stopped is not None:
        return _stopped(report, ctx, ctx.stopped)
    return _ended(report, ctx, live, output=output)


def _conclude(report: ReplayReport, outcome: str, message: str, **fields) -> ReplayReport:
    report.outcome = outcome
    report.message = message
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def _stopped(report: ReplayReport, ctx: ReplayContext, stop: ReplayStop) -> ReplayReport:
    report.replayed = ctx.replayed
    outcome, message = stop.outcome, stop.message
    expected = stop.expected
    if outcome == "continues" and report.run_status == "succeeded":
        # The recorded run ended here; the code would now go on.
        outcome, expected = "diverged", "(end of run)"
        message = f"the run finished after {report.recorded_steps} steps, but the code {message}"
    return _conclude(report, outcome, message, position=stop.position, expected=expected, called=stop.called)


def _ended(report: ReplayReport, ctx: ReplayContext, live: list[dict], *, output=None, raised=None):
    """The workflow function returned or raised: compare that with how the run ended."""
    report.replayed = ctx.replayed
    how = "returns" if raised is None else f"raises {_error_type(raised)}"
    unused = sorted(c["position"] for c in live if c["position"] >= ctx.position)
    if unused:
        first = next(c for c in live if c["position"] == unused[0])
        return _conclude(
            report,
            "diverged",
            f"at position {unused[0]} the code now {how}, but the run recorded step {first['name']!r} "
            f"there ({len(unused)} recorded steps unused)",
            position=unused[0],
            expected=first["name"],
            called="(return)" if raised is None else f"(raise {_error_type(raised)})",
        )
    run = ctx._run
    status = run.get("status")
    if raised is not None:
        error = f"{_error_type(raised)}: {_error_message(raised)}"
        if status == "failed" and run.get("error_type") == _error_type(raised):
            return _conclude(report, "clean", f"reproduces the recorded failure: {error}")
        return _conclude(report, "differs", f"the code now raises {error}, but {_ending_of(run)}")
    report.output = output
    if status == "succeeded":
        if _as_json(output) == run.get("output"):
            return _conclude(
                report, "clean", f"replays cleanly and returns the recorded output ({len(live)} steps)"
            )
        return _conclude(
            report,
            "differs",
            f"the code now returns {_short(output)}, but the run returned {_short(run.get('output'))}",
        )
    if status == "failed":
        return _conclude(report, "differs", f"the code now returns {_short(output)}, but {_ending_of(run)}")
    return _conclude(
        report,
        "continues",
        f"replays all {len(live)} recorded steps; the run ({status}) would now finish with {_short(output)}",
    )


def _error_type(exc: BaseException) -> str:
    # The engine records a step's own error type when a StepFailed ends the run.
    return exc.error_type if isinstance(exc, StepFailed) else type(exc).__qualname__


def _error_message(exc: BaseException) -> str:
    return exc.error_message if isinstance(exc, StepFailed) else str(exc)


def _ending_of(run: dict) -> str:
    status = run.get("status")
    if status == "failed":
        return f"the run failed with {run.get('error_type')}: {run.get('error_message')}"
    return "the run succeeded" if status == "succeeded" else f"the run is {status}"


def _as_json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
