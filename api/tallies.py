"""What /metrics' counters count: running totals that never drop and are cheap to read.

Prometheus counters must only go up, and a scrape must not add up whole tables. For
each counted table (checkpoints, failed attempts, recoveries in the audit log) a
`Tally` holds sums by label values of its rows up to an id (`counted_to`); a scrape
adds up only the rows after it, in one query per table, and reports both. Nothing
is written on the hot path: the per-step checkpoint stays one statement.

Rows join the tally once no transaction can still be writing a lower id (ids are
handed out before commit, so a low id can appear after a higher one): a scrape notes
the highest id it sees, and one DURABLE_METRICS_SETTLE_SECONDS later everything up
to it is added to the tally, by a conditional update (two scrapes at once: one wins).

Pruning deletes rows. Inside each prune batch, before the delete, `settle_pruned`
adds to the tallies the doomed rows they do not hold yet. A scrape reads tallies and
newer rows in one snapshot, so it never sees a prune half-way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import NotSupportedError, connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    Max,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.utils import timezone

from api.models import Tally, Totals, added, label_key
from runs.models import AuditEntry
from steps.models import Attempt, Checkpoint

# Step durations, in seconds: tool calls take milliseconds, model calls seconds to minutes.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
TOKEN_KEYS = ("input_tokens", "output_tokens", "cost_usd")

# Label values (a tuple) -> sums ({"n": 3, "seconds": 1.5, ...}).
Counts = dict[tuple, dict[str, float]]


class JSONNumber(Func):
    """The number under `key` of a JSON column; NULL when the key is missing or not a number."""

    output_field = FloatField()

    def __init__(self, column: str, key: str):
        super().__init__(F(column))
        self.key = key

    def as_sqlite(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        path = f'$."{self.key}"'
        sql = f"CASE WHEN json_type({column}, %s) IN ('integer', 'real') THEN json_extract({column}, %s) END"
        return sql, (*params, path, *params, path)

    def as_postgresql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        sql = (
            f"CASE WHEN jsonb_typeof({column} -> %s) = 'number' THEN ({column} ->> %s)::double precision END"
        )
        return sql, (*params, self.key, *params, self.key)

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("JSONNumber supports SQLite and PostgreSQL")


@dataclass(frozen=True)
class Source:
    """A counted table: which rows, grouped by which labels, summed how."""

    name: str
    rows: Callable[[], QuerySet]
    labels: tuple[str, ...]
    sums: Callable[[], dict[str, Any]]
    # Its rows are deleted with their run (and must be settled before a prune).
    pruned_with_runs: bool

    def groups(self, rows: QuerySet, settle_to: int) -> list[dict]:
        """Sums by label values, split into rows up to `settle_to` and after, with each group's last id."""
        settled = Case(
            When(pk__lte=settle_to, then=Value(True)), default=Value(False), output_field=BooleanField()
        )
        return list(
            rows.order_by()
            .annotate(settled=settled)
            .values(*self.labels, "settled")
            .annotate(last=Max("pk"), **self.sums())
        )

    def keyed(self, group: dict) -> tuple[str, dict[str, float]]:
        return label_key(group[label] for label in self.labels), {
            name: number(group[name]) for name in self.sums()
        }


def number(value) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value or 0


def checkpoint_rows() -> QuerySet:
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    return Checkpoint.objects.alias(duration=duration)


def checkpoint_sums() -> dict[str, Any]:
    """Per step and status: how many, their duration (sum and histogram buckets), LLM usage."""
    buckets = {
        f"le_{index}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
        for index, bound in enumerate(BUCKETS)
    }
    tokens = {key: Sum(JSONNumber("meta", key)) for key in TOKEN_KEYS}
    return {"n": Count("pk"), "seconds": Sum("duration"), **buckets, **tokens}


def count() -> dict[str, Any]:
    return {"n": Count("pk")}


SOURCES = (
    Source("checkpoints", checkpoint_rows, ("run__workflow", "name", "status"), checkpoint_sums, True),
    Source("attempts", Attempt.objects.all, ("run__workflow", "name"), count, True),
    Source(
        "recoveries", lambda: AuditEntry.objects.filter(action="recover"), ("details__outcome",), count, False
    ),
)


def current(now: datetime | None = None) -> dict[str, Counts]:
    """Totals by table and label values: what the tallies hold plus the rows after them.

    Settled rows are added to the tallies on the way (at most one write per table).
    """
    now = now or timezone.now()
    settle = timedelta(seconds=settings.DURABLE_METRICS_SETTLE_SECONDS)
    tallies, groups = read(now, settle)
    result = {}
    for source in SOURCES:
        tally, rows = tallies[source.name], groups[source.name]
        totals = added(tally.totals, (source.keyed(row) for row in rows))
        result[source.name] = unkeyed(totals)
        seen_to = max([tally.seen_to, *(row["last"] for row in rows)])
        if tally.wants_fold(now, settle, seen_to):
            settled = (source.keyed(row) for row in rows if row["settled"])
            tally.fold(settled, tally.settle_to(now, settle), seen_to, now)
    return result


def read(now: datetime, settle: timedelta) -> tuple[dict[str, Tally], dict[str, list[dict]]]:
    """The tallies and the sums of the rows after them, in one snapshot."""
    with snapshot():
        tallies = {tally.source: tally for tally in Tally.objects.all()}
        if all(source.name in tallies for source in SOURCES):
            groups = {}
            for source in SOURCES:
                tally = tallies[source.name]
                after = source.rows().filter(pk__gt=tally.counted_to)
                groups[source.name] = source.groups(after, tally.settle_to(now, settle))
            return tallies, groups
    # The first scrape (of a table): its tally starts at zero.
    Tally.objects.bulk_create([Tally(source=source.name) for source in SOURCES], ignore_conflicts=True)
    return read(now, settle)


@contextmanager
def snapshot():
    """One consistent view for several reads: a prune may commit between them."""
    if connection.in_atomic_block:  # already inside a transaction: its view it is
        yield
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def unkeyed(totals: Totals) -> Counts:
    return {tuple(json.loads(key)): sums for key, sums in totals.items()}


def settle_pruned(sender, run_ids: list[int], **kwargs) -> None:
    """Add the rows of runs about to be pruned that the tallies do not hold yet.

    Connected to runs.retention.pruning, which is sent inside the prune's transaction:
    the tally's row lock is held until the rows are gone.
    """
    pruned = [source for source in SOURCES if source.pruned_with_runs]
    tallies = {tally.source: tally for tally in Tally.objects.filter(source__in=[s.name for s in pruned])}
    for source in pruned:
        tally = tallies.get(source.name)
        if tally is None:  # never scraped: nothing was reported that could drop
            continue
        doomed = source.rows().filter(run_id__in=run_ids)
        # counted_to only grows: nothing after a stale mark, nothing after the current one.
        if not doomed.filter(pk__gt=tally.counted_to).exists():
            continue
        tally = Tally.objects.select_for_update().get(pk=tally.pk)
        rows = source.groups(doomed.filter(pk__gt=tally.counted_to), tally.counted_to)
        tally.absorb(source.keyed(row) for row in rows)
