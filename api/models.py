"""Running totals behind /metrics' counters (see api/tallies.py for how they are kept)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import models
from django.db.models import F

# Label values (a JSON list, "["refund", "charge", "succeeded"]") -> sums ({"n": 3, ...}).
Totals = dict[str, dict[str, float]]


class Tally(models.Model):
    """What the metrics have counted of one table: sums by label values, up to an id.

    Rows with an id up to `counted_to` are in `totals` (and stay there when the rows
    are pruned); later rows are added up on each scrape. Totals and mark live in one
    row, so one statement reads both and one conditional update moves both.
    """

    source = models.CharField(max_length=40, unique=True)  # "checkpoints", "attempts", ...
    counted_to = models.BigIntegerField(default=0)
    # The highest id seen at `seen_at`: every id up to it had been handed out by then,
    # so once no transaction can still be writing one of them, they can be counted in.
    seen_to = models.BigIntegerField(default=0)
    seen_at = models.DateTimeField(null=True, blank=True)
    # Bumped by every write: a write based on what it read applies only over that version.
    version = models.PositiveBigIntegerField(default=0)
    totals = models.JSONField(default=dict)

    class Meta:
        verbose_name_plural = "tallies"

    def __str__(self) -> str:
        return f"{self.source} counted to id {self.counted_to}"

    def settle_to(self, now: datetime, settle: timedelta) -> int:
        """Up to which id rows may be counted in now: those seen at least `settle` ago."""
        if self.seen_at is not None and self.seen_at <= now - settle:
            return self.seen_to
        return self.counted_to

    def wants_fold(self, now: datetime, settle: timedelta, seen_to: int) -> bool:
        """Whether a scrape that saw ids up to `seen_to` has something to write."""
        if self.seen_at is None:
            return True  # note what is there now, to count it in later
        due = self.settle_to(now, settle) > self.counted_to
        return due or (self.seen_at <= now - settle and seen_to > self.seen_to)

    def fold(self, settled: Iterable[tuple[str, dict]], settle_to: int, seen_to: int, now: datetime) -> bool:
        """Add the rows up to `settle_to` to the totals and note `seen_to` as seen now.

        False, with nothing written, when another process wrote first (it did the same
        or settled a prune: the next scrape counts again).
        """
        totals = added(self.totals, settled)
        won = Tally.objects.filter(pk=self.pk, version=self.version).update(
            counted_to=settle_to, seen_to=seen_to, seen_at=now, totals=totals, version=F("version") + 1
        )
        return won == 1

    def absorb(self, rows: Iterable[tuple[str, dict]]) -> None:
        """Add rows about to be deleted to the totals; the caller holds this row's lock."""
        self.totals = added(self.totals, rows)
        self.version += 1
        self.save(update_fields=["totals", "version"])


def label_key(values: Iterable) -> str:
    return json.dumps(list(values))


def added(totals: Totals, rows: Iterable[tuple[str, dict]]) -> Totals:
    """`totals` plus (label key, sums) rows, as a new dict."""
    result = {key: dict(sums) for key, sums in totals.items()}
    for key, sums in rows:
        into = result.setdefault(key, {})
        for name, value in sums.items():
            into[name] = into.get(name, 0) + value
    return result
