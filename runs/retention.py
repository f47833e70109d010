"""Retention: delete finished runs older than a cutoff, in short batches.

Only finished runs (succeeded, failed, dead-lettered, cancelled) are ever
candidates, and a run whose parent is still active is kept (the parent may still
need its outcome). Each batch is one short transaction that

1. locks up to `batch_size` candidate run rows, skipping rows another
   transaction holds (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite serialises
   writers anyway), and re-checks in the same statement that they are finished
   and old, so a run an operator just retried is not taken;
2. deletes every row that cascades from those runs (checkpoints, attempts,
   signals, and whatever other app's rows point at a run with CASCADE), clears
   SET_NULL links (audit entries are kept, child runs are unlinked), and
3. deletes the runs.

Batches are independent: an interrupted prune leaves whole runs or none.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from runs.models import ACTIVE_STATUSES, FINAL_STATUSES, AuditEntry, Run

log = logging.getLogger(__name__)

PRUNABLE_STATUSES = tuple(sorted(FINAL_STATUSES))
DEFAULT_BATCH_SIZE = 500


@dataclass
class PruneReport:
    cutoff: datetime
    statuses: list[str]
    dry_run: bool
    runs: int = 0
    # Rows deleted with the runs, by table ("checkpoints": 120, ...).
    rows: Counter = field(default_factory=Counter)
    batches: int = 0

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        related = ", ".join(f"{n} {name}" for name, n in sorted(self.rows.items()) if n) or "nothing else"
        runs = f"{self.runs} run" + ("" if self.runs == 1 else "s")
        return (
            f"{verb} {runs} ({', '.join(self.statuses)}) finished before "
            f"{self.cutoff:%Y-%m-%d %H:%M:%S %Z} and {related}"
            + ("" if self.dry_run else f", in {self.batches} batches")
        )


def prunable(cutoff: datetime, statuses: Iterable[str] = PRUNABLE_STATUSES):
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


def prune(
    older_than: timedelta,
    *,
    statuses: Iterable[str] = PRUNABLE_STATUSES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    by=None,
) -> PruneReport:
    """Delete finished runs older than `older_than` with everything recorded about them."""
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    statuses = sorted(set(statuses))
    cutoff = timezone.now() - older_than
    report = PruneReport(cutoff=cutoff, statuses=statuses, dry_run=dry_run)
    candidates = prunable(cutoff, statuses)
    if dry_run:
        report.runs = candidates.count()
        for model, column in cascading_relations():
            rows = model._base_manager.filter(**{f"{column}__in": candidates.values("pk")})
            report.rows[label(model)] = rows.count()
        return report
    while True:
        with transaction.atomic():
            ids = list(
                candidates.select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True)[
                    :batch_size
                ]
            )
            if ids:
                report.rows.update(delete_runs(ids))
        report.runs += len(ids)
        report.batches += 1 if ids else 0
        if len(ids) < batch_size:
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
                **report.rows,
            },
        )
    log.info("prune: %s", report)
    return report


def delete_runs(ids: list[int]) -> Counter:
    """Delete these runs and what cascades from them; return row counts by table."""
    counts: Counter = Counter()
    for model, column in nulled_relations():
        model._base_manager.filter(**{f"{column}__in": ids}).update(**{column: None})
    for model, column in cascading_relations():
        rows = model._base_manager.filter(**{f"{column}__in": ids})
        counts[label(model)] += fast_delete(rows)
    # Every link to these runs is gone now: one plain DELETE, no collector.
    runs = Run.objects.filter(pk__in=ids)
    runs._raw_delete(runs.db)
    return counts


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
