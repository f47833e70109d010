"""Retention: delete finished runs older than a cutoff, in short batches.

Only finished runs are ever candidates, and by default only those that need
nobody: succeeded and cancelled. Failed and dead-lettered runs wait for an
operator, so they go only when named (`--status failed`). A run whose parent is
still active is kept (the parent may still need its outcome). Each batch is one
short transaction that

1. locks up to `batch_size` candidate run rows, skipping rows another
   transaction holds (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite serialises
   writers anyway), and re-checks in the same statement that they are finished
   and old, so a run an operator just retried is not taken;
2. sends `pruning` (other apps settle what they count before it goes), deletes
   every row that cascades from those runs (checkpoints, attempts, signals, and
   whatever other app's rows point at a run with CASCADE), clears SET_NULL links
   (audit entries and provider calls are kept, child runs are unlinked), and
3. deletes the runs.

Batches are independent: an interrupted prune leaves whole runs or none. A dry
run reads the same selection (`prunable`) and lists what would go.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import models, transaction
from django.db.models import Count, Q
from django.dispatch import Signal
from django.utils import timezone

from runs.models import ACTIVE_STATUSES, FINAL_STATUSES, AuditEntry, Run, Status

log = logging.getLogger(__name__)

PRUNABLE_STATUSES = tuple(sorted(FINAL_STATUSES))
# What a prune takes unless told otherwise: runs nobody needs to look at again.
DEFAULT_STATUSES = (Status.CANCELLED.value, Status.SUCCEEDED.value)
DEFAULT_BATCH_SIZE = 500
# How many of the runs a prune takes its report names.
DEFAULT_SHOWN = 20

# Sent inside each batch's transaction, before anything is deleted, with the ids of
# the runs about to go: receivers settle what they derive from those rows.
pruning = Signal()


@dataclass(frozen=True)
class PrunedRun:
    id: int
    workflow: str
    status: str
    finished_at: datetime | None


@dataclass
class PruneReport:
    cutoff: datetime
    statuses: list[str]
    dry_run: bool
    runs: int = 0
    by_status: Counter = field(default_factory=Counter)
    # The first runs taken, by id (at most `shown` of them).
    first: list[PrunedRun] = field(default_factory=list)
    shown: int = DEFAULT_SHOWN
    # Rows deleted with the runs, by table ("checkpoints": 120, ...).
    rows: Counter = field(default_factory=Counter)
    # Rows kept with their link to the run cleared ("provider calls": 12, ...).
    unlinked: Counter = field(default_factory=Counter)
    batches: int = 0

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        related = ", ".join(f"{n} {name}" for name, n in sorted(self.rows.items()) if n) or "nothing else"
        kept = ", ".join(f"{n} {name}" for name, n in sorted(self.unlinked.items()) if n)
        runs = f"{self.runs} run" + ("" if self.runs == 1 else "s")
        return (
            f"{verb} {runs} ({', '.join(self.statuses)}) finished before "
            f"{self.cutoff:%Y-%m-%d %H:%M:%S %Z} and {related}"
            + (f"; kept, unlinked: {kept}" if kept else "")
            + ("" if self.dry_run else f", in {self.batches} batches")
        )

    def listing(self) -> str:
        """Runs per status, then the first runs taken, one a line."""
        lines = [f"{status}: {n}" for status, n in sorted(self.by_status.items())]
        if self.first:
            more = f" (the first {len(self.first)})" if self.runs > len(self.first) else ""
            lines.append(f"runs{more}:")
            lines += [
                f"  {run.id}  {run.workflow}  {run.status}  {run.finished_at:%Y-%m-%d %H:%M}"
                if run.finished_at
                else f"  {run.id}  {run.workflow}  {run.status}"
                for run in self.first
            ]
        return "\n".join(lines)

    def take(self, rows: list[tuple]) -> None:
        """Count a batch of (id, workflow, status, finished_at) rows."""
        self.runs += len(rows)
        self.by_status.update(status for _, _, status, _ in rows)
        self.first += [PrunedRun(*row) for row in rows[: max(self.shown - len(self.first), 0)]]


def prunable(cutoff: datetime, statuses: Iterable[str] = DEFAULT_STATUSES):
    """Finished runs of `statuses` that finished before `cutoff`, unless a parent still waits."""
    statuses = list(statuses)
    unknown = set(statuses) - set(PRUNABLE_STATUSES)
    if unknown:
        raise ValueError(
            f"only finished runs can be pruned ({', '.join(PRUNABLE_STATUSES)}), "
            f"not {', '.join(sorted(unknown))}"
        )
    finished_before = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, updated_at__lt=cutoff)
    active_parents = Run.objects.filter(status__in=list(ACTIVE_STATUSES)).values("pk")
    return (
        Run.objects.filter(status__in=statuses)
        .filter(finished_before)
        .exclude(parent__in=active_parents)
        .order_by("pk")
    )


REPORTED_FIELDS = ("pk", "workflow", "status", "finished_at")


def prune(
    older_than: timedelta,
    *,
    statuses: Iterable[str] = DEFAULT_STATUSES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    shown: int = DEFAULT_SHOWN,
    by=None,
) -> PruneReport:
    """Delete finished runs older than `older_than` with everything recorded about them."""
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    statuses = sorted(set(statuses))
    cutoff = timezone.now() - older_than
    report = PruneReport(cutoff=cutoff, statuses=statuses, dry_run=dry_run, shown=max(shown, 0))
    candidates = prunable(cutoff, statuses)
    if dry_run:
        return survey(candidates, report)
    while True:
        with transaction.atomic():
            rows = list(
                candidates.select_for_update(skip_locked=True, of=("self",)).values_list(*REPORTED_FIELDS)[
                    :batch_size
                ]
            )
            if rows:
                deleted, unlinked = delete_runs([row[0] for row in rows])
                report.rows.update(deleted)
                report.unlinked.update(unlinked)
        report.take(rows)
        report.batches += 1 if rows else 0
        if len(rows) < batch_size:
            break
    if report.runs:
        AuditEntry.record(
            None,
            "prune",
            by,
            details={
                "older_than_seconds": older_than.total_seconds(),
                "statuses": statuses,
                "runs": report.runs,
                "by_status": dict(report.by_status),
                **report.rows,
            },
        )
    log.info("prune: %s", report)
    return report


def survey(candidates: models.QuerySet, report: PruneReport) -> PruneReport:
    """Fill a dry run's report from the selection a prune would take; delete nothing."""
    counts = candidates.order_by().values_list("status").annotate(n=Count("pk"))
    report.by_status.update(dict(counts))
    report.runs = sum(report.by_status.values())
    report.first = [PrunedRun(*row) for row in candidates.values_list(*REPORTED_FIELDS)[: report.shown]]
    ids = candidates.values("pk")
    for model, column in cascading_relations():
        report.rows[label(model)] = model._base_manager.filter(**{f"{column}__in": ids}).count()
    for model, column in nulled_relations():
        report.unlinked[label(model)] = model._base_manager.filter(**{f"{column}__in": ids}).count()
    return report


def delete_runs(ids: list[int]) -> tuple[Counter, Counter]:
    """Delete these runs and what cascades from them; return row counts by table
    (deleted, and kept with their link cleared)."""
    pruning.send(sender=Run, run_ids=ids)
    deleted: Counter = Counter()
    unlinked: Counter = Counter()
    for model, column in nulled_relations():
        rows = model._base_manager.filter(**{f"{column}__in": ids})
        unlinked[label(model)] += rows.update(**{column: None})
    for model, column in cascading_relations():
        rows = model._base_manager.filter(**{f"{column}__in": ids})
        deleted[label(model)] += fast_delete(rows)
    # Every link to these runs is gone now: one plain DELETE, no collector.
    runs = Run.objects.filter(pk__in=ids)
    runs._raw_delete(runs.db)
    return deleted, unlinked


def fast_delete(rows: models.QuerySet) -> int:
    """One DELETE statement, unless the rows have dependents of their own elsewhere.

    Rows that only point at each other (a checkpoint's `edited_from`) go in the
    same statement; anything else takes Django's collector, which follows it.
    """
    model = rows.model
    if any(relation.related_model is not model for relation in reverse_relations(model)):
        return rows.delete()[0]
    return rows._raw_delete(rows.db)


def reverse_relations(model) -> list:
    # include_hidden: related_name="+" relations count too.
    return [
        f
        for f in model._meta.get_fields(include_hidden=True)
        if f.auto_created and not f.concrete and f.is_relation
    ]


def cascading_relations() -> list[tuple[type[models.Model], str]]:
    """(model, column) of every table whose rows are deleted with their run."""
    return [
        (relation.related_model, relation.field.attname)
        for relation in reverse_relations(Run)
        if relation.on_delete is models.CASCADE
    ]


def nulled_relations() -> list[tuple[type[models.Model], str]]:
    """(model, column) of every link to a run that is cleared when the run goes."""
    return [
        (relation.related_model, relation.field.attname)
        for relation in reverse_relations(Run)
        if relation.on_delete is models.SET_NULL
    ]


def label(model) -> str:
    return str(model._meta.verbose_name_plural)
