"""Bulk recovery: choose runs by a filter (or by id), count and sample them, then act on
them in bounded batches.

The dashboard, the API and `manage.py runs bulk` all go through a BulkPlan, so they
agree on which runs an action applies to. Acting calls the same Run method as for one
run, per run: each is a conditional update that writes its own audit entry, and a run
that changed state meanwhile is skipped, not forced. Eligibility is read again for
every batch, so running the same plan twice (or two operators at once) acts on each
run once: a resumed or retried run is no longer failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Case, Count, Exists, Max, OuterRef, Q, QuerySet, Subquery, When

from runs.models import ACTIVE_STATUSES, InvalidOperation, Run, Status, WaitKind
from steps.models import Attempt, Checkpoint

# Runs one request acts on; a larger selection is worked through batch by batch.
BATCH_SIZE = 200
# Runs a preview names as a sample.
SAMPLE_SIZE = 10
# Counts stop here and say "more than".
COUNT_CAP = 100_000

# A status filter value beside the statuses: waiting in a step's retry backoff.
RETRYING = "retrying"

ACTIONS: dict[str, tuple[str, str]] = {
    # action: (what it is called in a sentence, what a run becomes)
    "resume": ("resume", "resumed"),
    "cancel": ("cancel", "cancelled"),
    "retry": ("retry from a step", "retried"),
    "retry_now": ("retry now", "retried now"),
}


class BulkError(ValueError):
    """The plan cannot be carried out as asked (an unknown action, a retry without a step)."""


@dataclass
class Selection:
    """Which runs: every given criterion must hold; none given selects every run (the
    action then applies to those in a state it allows, counted before acting)."""

    workflow: str = ""
    status: str = ""  # a Status value, or RETRYING
    failed_step: str = ""  # the name of the step whose failure ended the run
    error_type: str = ""
    started_after: datetime | None = None
    started_before: datetime | None = None
    code_version: str = ""
    ids: list[int] = field(default_factory=list)

    def runs(self) -> QuerySet[Run]:
        runs = Run.objects.all()
        if self.ids:
            runs = runs.filter(pk__in=self.ids)
        if self.workflow:
            runs = runs.filter(workflow=self.workflow)
        if self.status == RETRYING:
            runs = runs.filter(status=Status.WAITING, wait_kind=WaitKind.RETRY)
        elif self.status:
            runs = runs.filter(status=self.status)
        if self.failed_step:
            failed_there = Checkpoint.objects.live().filter(
                run=OuterRef("pk"), position=OuterRef("error_position"), name=self.failed_step
            )
            runs = runs.filter(Exists(failed_there))
        if self.error_type:
            runs = runs.filter(error_type=self.error_type)
        if self.started_after:
            runs = runs.filter(created_at__gte=self.started_after)
        if self.started_before:
            runs = runs.filter(created_at__lt=self.started_before)
        if self.code_version:
            runs = runs.filter(code_version=self.code_version)
        return runs

    def step_names(self, limit: int = 50) -> list[str]:
        """The names of the live steps of the selected runs, alphabetically: what a retry
        from a step can name. Meant for a selection by id (a page's ticked runs)."""
        names = Checkpoint.objects.live().filter(run__in=self.runs().values("pk"))
        return list(names.order_by("name").values_list("name", flat=True).distinct()[:limit])


@dataclass
class Batch:
    done: list[int]
    refused: list[str]
    remaining: int  # eligible runs left after this batch (capped at COUNT_CAP + 1)


@dataclass
class BulkPlan:
    action: str
    selection: Selection
    from_step: str = ""  # retry: the step name to retry from, in each run at its own position
    reuse_signals: bool = False

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise BulkError(f"Unknown action {self.action!r}; the actions are {', '.join(ACTIONS)}.")
        if self.action == "retry" and not self.from_step:
            raise BulkError("Retry from a step needs the step's name.")

    def eligible(self) -> QuerySet[Run]:
        """The selected runs this action applies to, oldest first."""
        runs = self.selection.runs()
        if self.action == "resume":
            runs = runs.filter(status__in=[Status.FAILED, Status.DEAD])
        elif self.action == "cancel":
            runs = runs.filter(status__in=list(ACTIVE_STATUSES))
        elif self.action == "retry_now":
            runs = runs.filter(status=Status.WAITING, wait_kind=WaitKind.RETRY)
        else:
            # The last live step of that name: where a step that failed was, in a loop too.
            named = Checkpoint.objects.live().filter(run=OuterRef("pk"), name=self.from_step)
            runs = runs.filter(
                status__in=[Status.FAILED, Status.DEAD, Status.SUCCEEDED, Status.CANCELLED]
            ).annotate(
                retry_position=Subquery(
                    named.order_by().values("run").annotate(last=Max("position")).values("last")[:1]
                )
            )
            runs = runs.filter(retry_position__isnull=False)
        return runs.order_by("pk")

    def preview(self, sample: int = SAMPLE_SIZE) -> dict[str, Any]:
        """What acting would do: counts (capped), a sample, and code-version warnings."""
        eligible = self.eligible()
        selected = _capped(self.selection.runs())
        count = _capped(eligible)
        rows = list(eligible.defer("input", "output", "error_traceback")[:sample])
        return {
            "action": self.action,
            "selected": min(selected, COUNT_CAP),
            "selected_capped": selected > COUNT_CAP,
            "eligible": min(count, COUNT_CAP),
            "eligible_capped": count > COUNT_CAP,
            "batch_size": BATCH_SIZE,
            "sample": [self._describe(run) for run in rows],
            "code_warnings": self.code_warnings(),
            "signal_steps": self.signal_steps() if self.action == "retry" else 0,
        }

    def _describe(self, run: Run) -> dict[str, Any]:
        return {
            "id": run.pk,
            "workflow": run.workflow,
            "status": run.status,
            "error": f"{run.error_type}: {run.error_message}"[:300] if run.error_type else "",
            "position": getattr(run, "retry_position", None),
            "code_version": run.code_version,
        }

    def code_warnings(self) -> list[str]:
        return code_warnings(self.eligible())

    def signal_steps(self) -> int:
        """How many eligible runs would retry across a signal they had received."""
        runs = self.eligible()
        across = Checkpoint.objects.live().filter(
            run=OuterRef("pk"), position__gte=OuterRef("retry_position"), name__startswith="signal:"
        )
        return _capped(runs.filter(Exists(across)))

    def apply_batch(self, by, reason: str = "", size: int | None = None) -> Batch:
        """Act on the next `size` (BATCH_SIZE) eligible runs, each through its own Run method."""
        done, refused = [], []
        batch = self.eligible().defer("input", "output", "error_traceback")[: size or BATCH_SIZE]
        for run in list(batch):
            try:
                self._act(run, by, reason)
                done.append(run.pk)
            except InvalidOperation as exc:
                refused.append(str(exc))
        return Batch(done=done, refused=refused, remaining=_capped(self.eligible()))

    def _act(self, run: Run, by, reason: str) -> None:
        if self.action == "resume":
            run.resume(by=by, reason=reason)
        elif self.action == "cancel":
            run.cancel(by=by, reason=reason)
        elif self.action == "retry_now":
            run.retry_now(by=by, reason=reason)
        else:
            run.retry_from(run.retry_position, by=by, reason=reason, reuse_signals=self.reuse_signals)


def _capped(runs: QuerySet[Run]) -> int:
    return runs.order_by().values("pk")[: COUNT_CAP + 1].count()


def retrying_runs(runs: QuerySet[Run] | None = None) -> QuerySet[Run]:
    """Runs backing off before a step's next attempt, soonest first, with_retry_figures."""
    runs = Run.objects.all() if runs is None else runs
    backoff = runs.filter(status=Status.WAITING, wait_kind=WaitKind.RETRY)
    return with_retry_figures(backoff).order_by("wake_at", "pk")


def with_retry_figures(runs: QuerySet[Run]) -> QuerySet[Run]:
    """Annotate what a list shows of a run in retry backoff: failed attempts so far
    (`failed_attempts`), the step's limit (`max_attempts`) and its name (`retrying_step`);
    None for every other run. In the rows' own query: a page costs no query per row, and
    the subqueries run only for the runs in backoff (a CASE evaluates its branch lazily)."""
    failed = Attempt.objects.live().filter(
        run=OuterRef("pk"), position=OuterRef("wait_position"), branch__isnull=True
    )
    last = failed.order_by("-number", "-id")
    in_backoff = Q(status=Status.WAITING, wait_kind=WaitKind.RETRY)

    def in_backoff_only(value: Subquery) -> Case:
        return Case(When(in_backoff, then=value), default=None)

    return runs.annotate(
        failed_attempts=in_backoff_only(
            Subquery(failed.order_by().values("run").annotate(n=Count("pk")).values("n")[:1])
        ),
        max_attempts=in_backoff_only(Subquery(last.values("max_attempts")[:1])),
        retrying_step=in_backoff_only(Subquery(last.values("name")[:1])),
    )


def code_warnings(runs: QuerySet[Run]) -> list[str]:
    """One line per workflow whose runs ran other code than the deployed one."""
    from runs.workflow import UnknownWorkflow, registry

    groups = (
        runs.order_by()
        .values("workflow", "code_version")
        .annotate(n=Count("pk"))
        .order_by("workflow", "code_version")[:50]
    )
    warnings = []
    for group in groups:
        try:
            deployed = registry.get(group["workflow"]).version
        except UnknownWorkflow:
            warnings.append(
                f"{group['n']} run(s) of {group['workflow']!r}: the workflow is not registered in the "
                "code deployed here."
            )
            continue
        if group["code_version"] and group["code_version"] != deployed:
            warnings.append(
                f"{group['n']} run(s) of {group['workflow']} ran code version {group['code_version']}; "
                f"the deployed code is version {deployed}. They will be replayed with it and record it."
            )
    return warnings
