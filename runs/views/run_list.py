"""The run list: filters, status counts and keyset pages that cost the same at any table size."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.db.models import Count, Max, Q, QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agentkit import accounting
from runs.bulk import with_retry_figures
from runs.forms import BULK_LIMIT, RunFilterForm
from runs.models import Run, Status, WorkerProcess
from runs.search import text_condition
from runs.views.common import (
    AuthenticatedHttpRequest,
    check_viewer,
    login_required,
    url_filler,
    wants_fragment,
)
from runs.workflow import registry

PAGE_SIZE = 50
# Runs whose step count serves as their workflow's typical length (progress bars).
TYPICAL_SAMPLE = 500
# Statuses in the order operators scan them; any status added later goes last.
_SCAN_ORDER = ("running", "waiting", "pending", "queued", "failed", "dead", "succeeded", "cancelled")
STATUS_ORDER = sorted(
    Status.values, key=lambda s: _SCAN_ORDER.index(s) if s in _SCAN_ORDER else len(_SCAN_ORDER)
)
# Shown in the status counts even at zero; other statuses only when present.
ALWAYS_COUNTED = ("running", "waiting", "pending", "failed", "dead", "succeeded", "cancelled")
# Filtered by start time, the counts are taken among this many of the newest runs.
START_SAMPLE = 2_000
# A text search reads this many run ids per page at most (see search_page).
SEARCH_WINDOW = 10_000
# The run list counts each status up to this many runs, then shows "10,000+".
COUNT_CAP = 10_000
# Run columns a list row never shows; they can be large.
LIST_DEFERRED = ("output", "error_traceback")


@dataclass
class RunPage:
    runs: list[Run]
    newer: int | None = None  # cursor for the page of newer runs, if there is one
    older: int | None = None  # cursor for the page of older runs, if there is one
    # A text search's window of run ids [low, high), when the search was bounded.
    searched: tuple[int, int] | None = None

    @property
    def active_ids(self) -> list[int]:
        return [run.pk for run in self.runs if run.is_active]


@dataclass(frozen=True)
class Keyset:
    """A list's order, newest first: by id, or by creation time then id. The list filtered
    by start time takes the second, which its index on created_at serves; ordered by id,
    an old time range would be found only by reading every newer run."""

    by_start: bool = False

    @property
    def newest_first(self) -> list[str]:
        return ["-created_at", "-pk"] if self.by_start else ["-pk"]

    @property
    def oldest_first(self) -> list[str]:
        return ["created_at", "pk"] if self.by_start else ["pk"]

    def older_than(self, pk: int, created_at: datetime) -> Q:
        if not self.by_start:
            return Q(pk__lt=pk)
        # "created_at <= t" bounds the index scan; the rest breaks ties by id.
        return Q(created_at__lte=created_at) & ~Q(created_at=created_at, pk__gte=pk)

    def newer_than(self, pk: int, created_at: datetime) -> Q:
        if not self.by_start:
            return Q(pk__gt=pk)
        return Q(created_at__gte=created_at) & ~Q(created_at=created_at, pk__lte=pk)

    def moment(self, pk: int | None) -> datetime | None:
        """The creation time of a cursor's run, when the order needs it."""
        if pk is None or not self.by_start:
            return None
        return Run.objects.filter(pk=pk).values_list("created_at", flat=True).first()


def keyset_page(
    runs: QuerySet[Run], before: int | None, after: int | None, keyset: Keyset = Keyset()
) -> RunPage:
    """One page of runs, newest first, found from a cursor rather than by OFFSET."""
    runs = runs.defer(*LIST_DEFERRED)
    if after is not None:
        moment = keyset.moment(after)
        newer = runs.filter(keyset.newer_than(after, moment)) if moment or not keyset.by_start else runs
        rows = list(newer.order_by(*keyset.oldest_first)[: PAGE_SIZE + 1])
        if len(rows) > PAGE_SIZE:
            rows = rows[:PAGE_SIZE][::-1]
            return RunPage(rows, newer=rows[0].pk, older=rows[-1].pk)
        before = None  # less than a page of newer runs: show the newest page
    moment = keyset.moment(before)
    window = runs
    if before is not None and (moment or not keyset.by_start):
        window = runs.filter(keyset.older_than(before, moment))
    rows = list(window.order_by(*keyset.newest_first)[: PAGE_SIZE + 1])
    page = RunPage(rows[:PAGE_SIZE])
    if len(rows) > PAGE_SIZE:
        page.older = page.runs[-1].pk
    if before is not None and page.runs:
        top = page.runs[0]
        if runs.filter(keyset.newer_than(top.pk, top.created_at)).exists():
            page.newer = top.pk
    elif before is not None:
        page.newer = 0  # past the end: offer the way back
    return page


def search_page(runs: QuerySet[Run], text: str, before: int | None, after: int | None) -> RunPage:
    """Runs whose input, output or error contains `text` (runs.search), found among
    SEARCH_WINDOW run ids at a time.

    Nothing indexes that text, so a search reads runs one by one; at a
    million runs, reading them all takes seconds. Each page reads at most one window
    of ids, and the pager goes on into the next window. A run id typed as the
    search is found wherever it is, on the first page.
    """
    if after is not None:
        low, high = after + 1, after + 1 + SEARCH_WINDOW
    else:
        high = before if before is not None else (Run.objects.aggregate(top=Max("pk"))["top"] or 0) + 1
        low = max(high - SEARCH_WINDOW, 1)  # run ids start at 1
    matching = runs.filter(text_condition(text), pk__gte=low, pk__lt=high)
    page = keyset_page(matching, before, after)
    page.searched = (low, high)
    if page.older is None and low > 1:
        page.older = low  # this window is done: on into the one below
    if not page.newer and (before is not None or after is not None):
        page.newer = high - 1  # back up into the window above
    hit = run_id_in(text)
    if hit is not None and before is None and after is None:
        found = runs.defer(*LIST_DEFERRED).filter(pk=hit).exclude(pk__in=[r.pk for r in page.runs]).first()
        if found is not None:
            page.runs.insert(0, found)
    return page


def run_id_in(text: str) -> int | None:
    """The run id a search names ("123" or "#123"), if it names one."""
    digits = text.strip().removeprefix("#")
    # Bounded so that a long number cannot overflow the id column.
    return int(digits) if digits.isdigit() and len(digits) <= 18 else None


def annotate_typical_steps(runs: list[Run]) -> None:
    """Give each run its workflow's typical step count (recent successes), for Run.progress()."""
    if all(run.status == Status.SUCCEEDED for run in runs):
        return  # a success is always 100%
    recent = (
        Run.objects.filter(status=Status.SUCCEEDED)
        .order_by("-pk")
        .values_list("workflow", "steps_done")[:TYPICAL_SAMPLE]
    )
    counts: dict[str, list[int]] = defaultdict(list)
    for workflow, steps in recent:
        counts[workflow].append(steps)
    # The median of recent successes: one unusually long run does not skew every bar.
    typical = {workflow: sorted(steps)[len(steps) // 2] for workflow, steps in counts.items()}
    for run in runs:
        run.typical_steps = typical.get(run.workflow)


def prepare_rows(runs: list[Run]) -> None:
    """What a list row shows beyond the run itself: progress, model usage, its link."""
    annotate_typical_steps(runs)
    accounting.attach_totals(runs)
    link = url_filler("run_detail")
    for run in runs:
        run.url = link(run.pk)


def capped_counts(runs: QuerySet[Run], statuses: Sequence[str], cap: int) -> dict[str, int]:
    """Runs per status, each counted only up to cap + 1, in one query.

    An exact count reads every matching index entry: at a million runs, more than a
    page's whole time budget. Counting each status up to a cap bounds the work at any
    table size (each count stops after cap + 1 entries of an index on status).
    """
    parts, params = [], []
    for index, status in enumerate(statuses):
        sample = runs.filter(status=status).order_by().values("pk")[: cap + 1]
        sql, sample_params = sample.query.sql_with_params()
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) AS capped_{index})")
        params.extend(sample_params)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return dict(zip(statuses, cursor.fetchone(), strict=True))


def sampled_counts(runs: QuerySet[Run], keyset: Keyset, cap: int) -> dict[str, int]:
    """Runs per status among the newest cap + 1 of a set, in one query.

    For the started-between filter: no index leads from a status to a time range, so
    capped_counts would read a status's runs one by one; the newest runs of the range
    come straight from the index on created_at. Beyond the cap, each count is a lower
    bound.
    """
    newest = runs.order_by(*keyset.newest_first)[: cap + 1]
    return newest.aggregate(**{status: Count("pk", filter=Q(status=status)) for status in STATUS_ORDER})


def window_counts(runs: QuerySet[Run]) -> dict[str, int]:
    """Runs per status, exactly, for a set already bounded (a text search's window)."""
    found = dict(runs.order_by().values_list("status").annotate(n=Count("pk")))
    return {status: found.get(status, 0) for status in STATUS_ORDER}


def status_counts(
    found: dict[str, int], filters: RunFilterForm, *, cap: float = math.inf, sample: float = math.inf
) -> list[dict[str, Any]]:
    """The counts above the list. A count above `cap` shows as "cap+" (capped_counts);
    when the runs counted are a full sample of the set (sampled_counts), every count
    is a lower bound."""
    others = [(name, value) for name, value in filters.query_items() if name != "status"]
    selected = filters.values().get("status") or ""
    full_sample = sum(found.values()) > sample
    counts = [
        {
            "status": status,
            "label": Status(status).label,
            "count": min(found[status], cap),
            "capped": found[status] > cap or (full_sample and found[status] > 0),
            "query": urlencode([*others, ("status", status)]),
            "selected": selected == status,
        }
        for status in STATUS_ORDER
        if status in ALWAYS_COUNTED or found[status] or selected == status
    ]
    total = {
        "status": "",
        "label": "all",
        "count": min(sum(count["count"] for count in counts), sample),
        "capped": any(count["capped"] for count in counts),
        "query": urlencode(others),
    }
    return [{**total, "selected": not selected}, *counts]


def list_context(filters: RunFilterForm) -> dict[str, Any]:
    # Read before the rows: a run changing in between shows at the next live refresh.
    stamp = Run.objects.last_change()
    values = filters.values()
    before, after, text = values.get("before"), values.get("after"), values.get("q")
    keyset = Keyset(by_start=bool(values.get("started_after") or values.get("started_before")))
    if text:
        page = search_page(with_retry_figures(filters.runs(search=False)), text, before, after)
        low, high = page.searched
        window = filters.runs(with_status=False, search=False)
        found = window_counts(window.filter(text_condition(text), pk__gte=low, pk__lt=high))
        counts = status_counts(found, filters)
    elif keyset.by_start:
        page = keyset_page(with_retry_figures(filters.runs()), before, after, keyset)
        found = sampled_counts(filters.runs(with_status=False), keyset, START_SAMPLE)
        counts = status_counts(found, filters, sample=START_SAMPLE)
    else:
        page = keyset_page(with_retry_figures(filters.runs()), before, after, keyset)
        found = capped_counts(filters.runs(with_status=False), STATUS_ORDER, COUNT_CAP)
        counts = status_counts(found, filters, cap=COUNT_CAP)
    prepare_rows(page.runs)
    query = filters.query_items()
    return {
        "filters": filters,
        "page": page,
        "counts": counts,
        # Only a page showing pending runs asks which queues live workers consume.
        "served_queues": (
            WorkerProcess.served_queues() if any(run.status == Status.PENDING for run in page.runs) else None
        ),
        "filter_items": query,
        "newer_query": urlencode([*query, ("after", page.newer)]) if page.newer else "",
        "older_query": urlencode([*query, ("before", page.older)]) if page.older else "",
        "newest_query": urlencode(query),
        "workflows": registry.names(),
        "search_window": SEARCH_WINDOW,
        "selected": set(),
        "bulk_limit": BULK_LIMIT,
        "refresh_query": filters.live_query(stamp),
    }


@require_GET
@login_required
def run_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    context = list_context(RunFilterForm(request.GET))
    if wants_fragment(request, "results"):
        return render(request, "runs/list.html#results", context)
    return render(request, "runs/list.html", context)


def parse_ids(values: list[str]) -> list[int]:
    ids = []
    for value in values:
        ids += [int(part) for part in value.split(",") if part.strip().isdigit() and len(part) <= 18]
    return ids
