"""The pre-deploy check: replay every in-flight run against the code in this checkout.

`check_runs()` reads runs that may still execute workflow code (running, waiting,
pending, queued, failed, dead-lettered) a batch at a time with their live
checkpoints, and replays each with runs.export's ReplayContext: recorded outputs
answer every durable call, no step function is called, nothing is written to a run.
A run is *unsafe* for this code when replay calls a different step than the one
recorded at a position (`diverged`), its workflow is not deployed here (`error`), or
a recorded step is now called with other arguments than it recorded. The report
counts, per workflow, how many replay cleanly and lists where the others part.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from runs.export import FORMAT, FORMAT_VERSION, ReplayReport, replay
from runs.models import Run, Signal, Status
from runs.workflow import UnknownWorkflow, pinned_elsewhere, registry
from steps.models import Checkpoint

IN_FLIGHT = (Status.RUNNING, Status.WAITING, Status.PENDING, Status.QUEUED, Status.FAILED, Status.DEAD)
BATCH = 500
UNSAFE_OUTCOMES = ("diverged", "error")
RUN_COLUMNS = ("id", "workflow", "status", "input", "output", "code_version", "error_type", "error_message")
CHECKPOINT_COLUMNS = (
    "run_id",
    "position",
    "name",
    "status",
    "output",
    "input",
    "error_type",
    "error_message",
    "superseded_at",
)
KEPT_FINDINGS = 50  # per workflow, in the stored report; the command prints them all


@dataclass
class Finding:
    """One run that the code in this checkout would not replay as recorded."""

    run_id: int
    status: str
    outcome: str
    message: str
    position: int | None = None
    expected: str | None = None
    called: str | None = None
    argument_changes: list = field(default_factory=list)

    @classmethod
    def of(cls, report: ReplayReport) -> Finding:
        return cls(
            run_id=report.run_id,
            status=report.run_status,
            outcome=report.outcome,
            message=report.message,
            position=report.position,
            expected=report.expected,
            called=report.called,
            argument_changes=[
                {"position": position, "step": name, "changes": changes}
                for position, name, changes in report.argument_changes
            ],
        )

    def lines(self) -> list[str]:
        if self.outcome in UNSAFE_OUTCOMES:
            found = [f"run {self.run_id} ({self.status}): {self.outcome}: {self.message}"]
        else:
            found = [f"run {self.run_id} ({self.status}): replays, but with other arguments"]
        for change in self.argument_changes:
            found.append(f"  step {change['step']!r} at position {change['position']}:")
            found.extend(f"    {text}" for text in change["changes"])
        return found


@dataclass
class WorkflowCheck:
    workflow: str
    runs: int = 0
    outcomes: dict = field(default_factory=lambda: defaultdict(int))
    versions: dict = field(default_factory=lambda: defaultdict(int))  # recorded code version: runs
    current_version: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def unsafe(self) -> int:
        return len(self.findings)

    @property
    def clean(self) -> int:
        return self.runs - self.unsafe

    def add(self, report: ReplayReport) -> None:
        self.runs += 1
        self.outcomes[report.outcome] += 1
        self.versions[report.recorded_version] += 1
        self.current_version = report.current_version
        if report.outcome in UNSAFE_OUTCOMES or report.argument_changes:
            self.findings.append(Finding.of(report))

    def summary(self) -> str:
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.outcomes.items()))
        verdict = f"{self.unsafe} diverge" if self.unsafe else "all replay cleanly"
        return f"{self.workflow}: {self.runs} runs, {self.clean} replay cleanly, {verdict} ({outcomes})"

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "clean": self.clean,
            "unsafe": self.unsafe,
            "outcomes": dict(self.outcomes),
            "recorded_versions": dict(self.versions),
            "current_version": self.current_version,
            "findings": [vars(finding) for finding in self.findings[:KEPT_FINDINGS]],
        }


@dataclass
class CheckReport:
    started_at: datetime
    seconds: float = 0.0
    workflows: dict[str, WorkflowCheck] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return sum(check.runs for check in self.workflows.values())

    @property
    def unsafe(self) -> int:
        return sum(check.unsafe for check in self.workflows.values())

    @property
    def ok(self) -> bool:
        return self.unsafe == 0

    def add(self, report: ReplayReport) -> None:
        check = self.workflows.get(report.workflow)
        if check is None:
            check = self.workflows[report.workflow] = WorkflowCheck(report.workflow)
        check.add(report)

    def as_json(self) -> dict[str, Any]:
        return {name: self.workflows[name].as_json() for name in sorted(self.workflows)}


def check_runs(
    *,
    statuses: Iterable[str] = IN_FLIGHT,
    workflows: Iterable[str] = (),
    run_ids: Iterable[int] = (),
) -> CheckReport:
    """Replay the selected runs against the code deployed in this process; write nothing."""
    report = CheckReport(started_at=timezone.now())
    began = time.perf_counter()
    now = timezone.now().isoformat()
    selected = Run.objects.filter(status__in=list(statuses))
    if workflows:
        selected = selected.filter(workflow__in=list(workflows))
    if run_ids:
        selected = selected.filter(pk__in=list(run_ids))
    ids = list(selected.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        for document in _documents(ids[start : start + BATCH], now):
            report.add(_pinned(document) or replay(document))
    report.seconds = time.perf_counter() - began
    return report


def _pinned(document: dict) -> ReplayReport | None:
    run = document["run"]
    try:
        deployed = registry.get(run["workflow"]).version
    except UnknownWorkflow:
        return None  # replay reports it
    if not pinned_elsewhere(run["code_version"], deployed):
        return None
    return ReplayReport(
        run_id=run["id"],
        workflow=run["workflow"],
        run_status=run["status"],
        recorded_version=run["code_version"],
        current_version=deployed,
        recorded_steps=len(document["checkpoints"]),
        outcome="pinned",
        message=f"pinned to version {run['code_version']}; not replayed against version {deployed}",
    )


def _documents(ids: list[int], now: str):
    """Export-shaped documents (runs.export) for a batch of runs, in three queries."""
    checkpoints = defaultdict(list)
    # Live checkpoints only: replay reads no other, and superseded ones may be many.
    rows = Checkpoint.objects.filter(run_id__in=ids, superseded_at__isnull=True).order_by()
    for row in rows.values(*CHECKPOINT_COLUMNS):
        checkpoints[row["run_id"]].append(row)
    signals = defaultdict(list)
    waiting = Signal.objects.filter(run_id__in=ids, consumed_at__isnull=True).order_by("pk")
    for row in waiting.values("run_id", "name", "consumed_at"):
        signals[row["run_id"]].append(row)
    for run in Run.objects.filter(pk__in=ids).order_by("pk").values(*RUN_COLUMNS):
        yield {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "exported_at": now,
            "run": run,
            "checkpoints": checkpoints[run["id"]],
            "signals": signals[run["id"]],
        }
