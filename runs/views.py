"""The operator dashboard: the run list, the run page, and the operator actions.

Views read and render. Every change to a run goes through one of Run's operator
methods, which enforce the state machine and write the audit entry; a request
the run's state does not allow comes back as InvalidOperation and is shown to
the operator as a message.

One template serves a page and its fragments: htmx requests that target a
fragment get `template.html#fragment`, everything else gets the whole page, so
every page also works without JavaScript.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, NamedTuple
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required as django_login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Count, Max, Q, QuerySet, Sum, TextField
from django.db.models.functions import Cast, Substr
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    HttpResponseLocation,
    reswap,
    retarget,
)
from django_htmx.middleware import HtmxDetails

from agents import accounting
from runs.bulk import BulkPlan, Selection, with_retry_figures
from runs.forms import (
    BULK_ACTIONS,
    BULK_LIMIT,
    BulkForm,
    EditOutputForm,
    ReasonForm,
    RunFilterForm,
    SignalForm,
    pretty,
)
from runs.models import (
    AuditEntry,
    InvalidOperation,
    OutcomeHour,
    Run,
    Status,
    WaitKind,
    WorkerProcess,
    code_versions_from,
)
from runs.search import text_condition
from runs.templatetags.dashboard import JSON_CAP
from runs.workflow import registry
from steps.models import Attempt, AttemptGroup, Branch, Checkpoint, CheckpointStatus, group_attempts

PAGE_SIZE = 50
# Runs with more steps than this refresh their page every 10 s instead of 2 s.
LONG_RUN_STEPS = 200
# A finished run's page, or a long run's, polls this often (a 204 while nothing changed).
FINISHED_POLL = "8s"
# Child runs listed on a run page.
CHILDREN_SHOWN = 50
# Audit entries shown on a run page, newest first.
AUDIT_SHOWN = 200
# The overview scans a day of runs; every viewer shares one result for this long.
OVERVIEW_CACHE_SECONDS = 30
OVERVIEW_CACHE_KEY = "dashboard:overview"
# Step durations for the overview come from at most this many recent checkpoints.
STEP_SAMPLE = 20_000
# Runs whose step count serves as their workflow's typical length (progress bars).
TYPICAL_SAMPLE = 500
# Total characters of step output shown inline on a run page; each step gets a
# share between 2 KB and 20 KB, the rest is one click away.
INLINE_OUTPUT_BUDGET = 600_000
# A run with at most this many steps shows each step's output, attempts and tracebacks
# inline. A longer run shows one compact line per step, and a step's details load
# when it is opened: drawn in full, a 1,000-step page weighed over a megabyte.
INLINE_STEPS = 50
# Steps whose output a run page shows unfolded; later outputs start folded, except the
# latest step's (usually the final answer) and a failure's, which show as a short run's do.
OPEN_STEPS = 3
# Characters of a step's output, and of a failed step's error message, on its compact line.
PREVIEW_CHARS = 100
ERROR_CHARS = 160
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


class AuthenticatedHttpRequest(HttpRequest):
    user: User
    htmx: HtmxDetails


# --- access ----------------------------------------------------------------------


def can_view(user) -> bool:
    return user.has_perm("runs.view_run") or user.has_perm("runs.operate")


# What the 403 page says is missing (templates/403.html shows the exception's message).
VIEW_NEEDED = "Looking at runs needs the “runs.view_run” permission (Can view run), or “runs.operate”."
OPERATE_NEEDED = "This needs the “runs.operate” permission (Can resume, retry, cancel, signal and edit runs)."


def check_viewer(user) -> None:
    if not can_view(user):
        raise PermissionDenied(VIEW_NEEDED)


def check_operator(user) -> None:
    if not user.has_perm("runs.operate"):
        raise PermissionDenied(OPERATE_NEEDED)


def get_run(request: AuthenticatedHttpRequest, run_id: int, *, operate: bool = False) -> Run:
    # Permission first, so that users without access cannot probe which runs exist.
    if operate:
        check_operator(request.user)
    else:
        check_viewer(request.user)
    return get_object_or_404(Run, pk=run_id)


def login_required(view):
    """Django's login_required, except that an htmx request (a poll, an action) whose
    session has expired sends the whole page to the login form, not a fragment."""
    guarded = django_login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.htmx and not request.user.is_authenticated:
            back = request.htmx.current_url_abs_path or request.get_full_path()
            return HttpResponseClientRedirect(redirect_to_login(back).url)
        return guarded(request, *args, **kwargs)

    return wrapper


def wants_fragment(request: AuthenticatedHttpRequest, target: str) -> bool:
    return request.htmx.target == target and not request.htmx.history_restore_request


def see_other(url: str) -> HttpResponse:
    response = redirect(url)
    response.status_code = 303
    return response


# --- run list ------------------------------------------------------------------------


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


# --- overview --------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


STEP_PERCENTILES_SQL = """
    SELECT name, COUNT(*),
           percentile_disc(0.5) WITHIN GROUP (ORDER BY seconds),
           percentile_disc(0.95) WITHIN GROUP (ORDER BY seconds)
    FROM (SELECT name, EXTRACT(EPOCH FROM finished_at - started_at) AS seconds
          FROM {table} WHERE finished_at >= %s ORDER BY finished_at DESC LIMIT %s) AS recent
    GROUP BY name
"""


def step_durations(since: datetime) -> tuple[list[dict[str, Any]], bool]:
    """p50/p95 duration by step name over the most recent checkpoints since `since`."""
    found = step_percentiles_in_sql(since) if connection.vendor == "postgresql" else step_percentiles(since)
    stats = [{"name": name, "count": n, "p50": float(p50), "p95": float(p95)} for name, n, p50, p95 in found]
    stats.sort(key=lambda row: (-row["count"], row["name"]))
    return stats[:12], sum(row["count"] for row in stats) >= STEP_SAMPLE


def step_percentiles_in_sql(since: datetime) -> list[tuple]:
    # The same nearest-rank percentiles (percentile_disc) without sending 20,000 rows to
    # Python: a tenth of the time at a million runs.
    with connection.cursor() as cursor:
        cursor.execute(STEP_PERCENTILES_SQL.format(table=Checkpoint._meta.db_table), [since, STEP_SAMPLE])
        return cursor.fetchall()


def step_percentiles(since: datetime) -> list[tuple]:
    rows = (
        Checkpoint.objects.filter(finished_at__gte=since)
        .order_by("-finished_at")
        .values_list("name", "started_at", "finished_at")[:STEP_SAMPLE]
    )
    by_name: dict[str, list[float]] = defaultdict(list)
    for name, started, finished in rows:
        by_name[name].append((finished - started).total_seconds())
    found = []
    for name, seconds in by_name.items():
        seconds.sort()
        found.append((name, len(seconds), percentile(seconds, 0.5), percentile(seconds, 0.95)))
    return found


@require_GET
@login_required
def run_overview(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The last 24 hours in numbers: a fragment the run list loads, or a page of its own."""
    check_viewer(request.user)
    context = {"overview": cache.get_or_set(OVERVIEW_CACHE_KEY, overview, OVERVIEW_CACHE_SECONDS)}
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "runs/overview.html#overview", context)
    return render(request, "runs/overview.html", context)


def overview(now: datetime | None = None) -> dict[str, Any]:
    """Numbers for the last 24 hours (the current hour and the 23 before it)."""
    now = now or timezone.now()
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    hours = OutcomeHour.last_day(first_hour)
    totals: dict[str, int] = defaultdict(int)
    for hour in hours:
        for status in Status.values:
            totals[status] += hour.get(status, 0)
    failed = totals[Status.FAILED] + totals[Status.DEAD]
    finished = failed + totals[Status.SUCCEEDED]
    steps, sampled = step_durations(first_hour)
    return {
        "since": first_hour,
        "hours": hours,
        "started": sum(totals.values()),
        "failed": failed,
        "failure_rate": failed / finished if finished else None,
        "recoveries": AuditEntry.objects.filter(action="recover", created_at__gte=first_hour).count(),
        "steps": steps,
        "steps_sampled": sampled,
        "step_sample": STEP_SAMPLE,
        "llm_costs": accounting.cost_by_workflow(now=now),
    }


# --- run page --------------------------------------------------------------------------


class CheckpointLine(NamedTuple):
    """A checkpoint as a compact step line shows it: a plain row rather than a model
    instance, because a thousand instances cost more than drawing the rest of the page
    (and keep the garbage collector busy)."""

    pk: int
    position: int
    name: str
    status: str
    error_type: str
    error_message: str  # the first ERROR_CHARS characters
    attempts: int
    epoch: int
    started_at: datetime
    finished_at: datetime
    superseded_at: datetime | None
    edited_from_id: int | None
    output_head: str | None  # the output's JSON text, cut after PREVIEW_CHARS + 1 characters

    @property
    def duration(self) -> timedelta:
        return self.finished_at - self.started_at


# The columns a CheckpointLine is read from, in its fields' order.
CHECKPOINT_LINE = (
    "id",
    "position",
    "name",
    "status",
    "error_type",
    "error_head",
    "attempts",
    "epoch",
    "started_at",
    "finished_at",
    "superseded_at",
    "edited_from_id",
    "output_head",
)


@dataclass(slots=True)
class StepRow:
    """Everything recorded at one position of a run."""

    position: int
    name: str
    # The live checkpoint, if the step has one: a model instance, or a CheckpointLine.
    checkpoint: Checkpoint | CheckpointLine | None = None
    superseded: Sequence[Checkpoint | CheckpointLine] = ()
    attempts: Sequence[Attempt] = ()
    branches: Sequence[Branch] = ()  # calls of a parallel group here
    url: str = ""  # where the step's details are
    crosses_signal: bool = False  # a retry from here goes back across a received signal
    fold: bool = False  # its output starts folded on a long run's page

    @property
    def all_checkpoints(self) -> list[Checkpoint | CheckpointLine]:
        return [*self.superseded, *([self.checkpoint] if self.checkpoint else [])]

    @property
    def status(self) -> str:
        if self.checkpoint:
            return self.checkpoint.status
        if any(attempt.superseded_at is None for attempt in self.attempts):
            return "retrying"
        if any(branch.superseded_at is None for branch in self.branches):
            return "running"
        return "superseded"

    @property
    def attempt_groups(self) -> list[AttemptGroup]:
        return group_attempts(self.attempts)

    @property
    def earlier_attempts(self) -> int:
        """Failed attempts before the last recovery: shown apart, not in the checkpoint's count."""
        return sum(1 for attempt in self.attempts if attempt.superseded_at is not None)

    @property
    def live_attempts(self) -> int:
        return sum(1 for attempt in self.attempts if attempt.superseded_at is None)

    @property
    def llm(self) -> accounting.LLMStep | None:
        """A model call's figures and conversation; None for other steps, and on compact
        lines, which do not read the meta (it holds the whole conversation)."""
        return accounting.llm_step(getattr(self.checkpoint, "meta", None))

    @property
    def preview(self) -> str:
        """The start of the output on one line, for a compact step line."""
        head = getattr(self.checkpoint, "output_head", None)
        if head is None:
            return ""
        return head if len(head) <= PREVIEW_CHARS else head[: PREVIEW_CHARS - 1] + "…"


def step_rows(
    checkpoints: list[Checkpoint | CheckpointLine], attempts: list[Attempt], branches: list[Branch] = ()
) -> list[StepRow]:
    """Group a run's history by position. Most positions hold one checkpoint and nothing
    else, so only the positions that have more get lists."""
    names: dict[int, str] = {}
    live: dict[int, Checkpoint | CheckpointLine] = {}
    superseded: dict[int, list] = defaultdict(list)
    for checkpoint in checkpoints:
        names.setdefault(checkpoint.position, checkpoint.name)
        if checkpoint.superseded_at is None:
            live[checkpoint.position] = checkpoint
            names[checkpoint.position] = checkpoint.name
        else:
            superseded[checkpoint.position].append(checkpoint)
    attempts_at: dict[int, list] = defaultdict(list)
    for attempt in attempts:
        names.setdefault(attempt.position, attempt.name)
        attempts_at[attempt.position].append(attempt)
    branches_at: dict[int, list] = defaultdict(list)
    for branch in branches:
        names.setdefault(branch.position, "parallel")
        branches_at[branch.position].append(branch)
    return [
        StepRow(
            position,
            names[position],
            live.get(position),
            superseded.get(position, ()),
            attempts_at.get(position, ()),
            branches_at.get(position, ()),
        )
        for position in sorted(names)
    ]


def live_stamp(run: Run) -> str:
    """Changes whenever the run does: every write to a run sets updated_at.

    Parallel branches progress without touching their run, so while a run waits
    for them their finished count and attempts are part of the version too.
    """
    stamp = f"{run.updated_at.timestamp():.6f}"
    if run.wait_kind != WaitKind.BRANCHES:
        return stamp
    progress = run.branches.live().aggregate(
        done=Count("pk", filter=Q(finished_at__isnull=False)), tries=Sum("attempts")
    )
    return f"{stamp}-{progress['done']}-{progress['tries'] or 0}"


def worker_state(run: Run) -> dict[str, Any] | None:
    """Who holds the run's lease, and whether that worker still proves it is alive."""
    if not run.lease_owner:
        return None
    process = WorkerProcess.objects.filter(name=run.lease_owner).first()
    heartbeat = process.heartbeat_at if process else None
    lapse = timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
    alive = heartbeat is not None and timezone.now() - heartbeat <= lapse
    return {"name": run.lease_owner, "heartbeat_at": heartbeat, "alive": alive}


def signal_form_for(run: Run, data=None) -> SignalForm:
    return SignalForm(data, initial={"name": run.wait_signal or "approve", "payload": "{}"})


def step_history(run: Run, *, inline: bool) -> list[StepRow]:
    """The run's steps: everything recorded, or for compact lines only what a line shows."""
    checkpoints = run.checkpoints.order_by("position", "id")
    attempts = run.attempts.order_by("position", "number", "id")
    branches = run.branches.defer("args", "kwargs").order_by("position", "index", "id")
    if inline:
        return step_rows(list(checkpoints), list(attempts), list(branches))
    lines = checkpoints.annotate(
        output_head=Substr(Cast("output", TextField()), 1, PREVIEW_CHARS + 1),
        error_head=Substr("error_message", 1, ERROR_CHARS),
    ).values_list(*CHECKPOINT_LINE)
    return step_rows(
        [CheckpointLine._make(line) for line in lines],
        list(attempts.defer("error_message", "error_traceback")),
        list(branches.defer("output", "error_traceback", "meta")),
    )


def code_version(run: Run) -> dict[str, Any]:
    """The run's code version against the code deployed here, for the run page's warning."""
    deployed = run.deployed_version()
    return {
        "recorded": run.code_version,
        "deployed": deployed,
        "registered": deployed is not None,
        "differs": bool(run.code_version) and deployed is not None and deployed != run.code_version,
    }


def detail_context(request: AuthenticatedHttpRequest, run: Run, **extra) -> dict[str, Any]:
    inline = run.steps_done <= INLINE_STEPS
    steps = step_history(run, inline=inline)
    waiting_for_signal = run.status == Status.WAITING and run.wait_kind == WaitKind.SIGNAL
    username = request.user.get_username()
    step_url = url_filler("run_step", run.pk)
    # The page has every checkpoint already: no query for the last signal's position.
    signal_positions = [
        step.position for step in steps if step.checkpoint and step.checkpoint.name.startswith("signal:")
    ]
    last_signal = max(signal_positions, default=None)
    last_live = max((step.position for step in steps if step.checkpoint), default=None)
    for index, step in enumerate(steps):
        step.url = step_url(step.position)
        step.crosses_signal = last_signal is not None and step.position <= last_signal
        latest_or_failed = step.position == last_live or step.status == CheckpointStatus.FAILED
        step.fold = index >= OPEN_STEPS and not latest_or_failed
    context = {
        "run": run,
        "steps": steps,
        "inline": inline,
        "live_steps": sum(1 for step in steps if step.checkpoint),
        "output_cap": max(2_000, min(20_000, INLINE_OUTPUT_BUDGET // max(len(steps), 1))),
        "audit": list(run.audit_entries.order_by("-id")[:AUDIT_SHOWN]),
        "signals": list(run.signals.order_by("-id")[:20]),
        "children": list(run.children.defer(*LIST_DEFERRED, "input").order_by("id")[:CHILDREN_SHOWN]),
        "worker": worker_state(run),
        "queue_unserved": run.queue_unserved(),
        "usage": accounting.totals_for_runs([run.pk]).get(run.pk),
        "code": code_version(run),
        "code_warning": run.code_warning(),
        "backoff": run.backoff(),
        "version": live_stamp(run),
        # A long run's page is heavy to redraw: it refreshes less often.
        "poll_every": "2s" if run.is_active and len(steps) <= LONG_RUN_STEPS else FINISHED_POLL,
        "signal_form": signal_form_for(run),
        "waiting_for_signal": waiting_for_signal,
        "asked": asked_by(run),
        # The shortcuts answer an approval the way agents expect it: {"approved": bool, "note": str}.
        "approve_payload": json.dumps({"approved": True, "note": f"approved by {username}", "by": username}),
        "reject_payload": json.dumps({"approved": False, "note": f"rejected by {username}", "by": username}),
    }
    # The version history from the audit entries already read (the newest AUDIT_SHOWN).
    context["code_versions"] = code_versions_from(
        [entry.details for entry in reversed(context["audit"])], run.code_version
    )
    context.update(extra)
    return context


def asked_by(run: Run) -> str:
    """What a run waiting for a signal asks a person: its prompt, else the summary in the
    output of the step before the wait (read only then, one small query)."""
    if run.status != Status.WAITING or run.wait_kind != WaitKind.SIGNAL:
        return ""
    if run.wait_prompt or not run.wait_position:
        return run.asks()
    previous = Checkpoint.objects.live().filter(run=run, position=run.wait_position - 1)
    return run.asks(previous.values_list("output", flat=True).first())


def url_filler(name: str, *args: int) -> Callable[[int], str]:
    """reverse(name, args=[*args, n]) for many n: reversed once, then filled in."""
    marker = 4_611_686_018_427_387_904  # 2**62: no run id or position looks like it
    head, _, tail = reverse(name, args=[*args, marker]).rpartition(str(marker))
    return lambda number: f"{head}{number}{tail}"


@require_GET
@login_required
def run_detail(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id)
    context = detail_context(request, run)
    if wants_fragment(request, "run-live"):
        return render(request, "runs/detail.html#run-live", context)
    return render(request, "runs/detail.html", context)


@require_GET
@login_required
def run_live(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """The run page's live section, 204 while nothing changed. A finished run keeps a
    slow poll: an edit made in the admin, the CLI or by another operator shows there."""
    run = get_run(request, run_id)
    if request.GET.get("v") == live_stamp(run):
        return HttpResponse(status=204)
    return render(request, "runs/detail.html#run-live", detail_context(request, run))


@require_GET
@login_required
def run_step(request: AuthenticatedHttpRequest, run_id: int, position: int) -> HttpResponse:
    """Everything recorded at one position of a run: the fragment a compact step line
    opens, or a page of its own without JavaScript."""
    run = get_run(request, run_id)
    steps = step_rows(
        list(run.checkpoints.filter(position=position).order_by("id")),
        list(run.attempts.filter(position=position).order_by("number", "id")),
        list(run.branches.filter(position=position).defer("args", "kwargs").order_by("index", "id")),
    )
    if not steps:
        raise Http404
    last_signal = run.last_signal_position()
    steps[0].crosses_signal = last_signal is not None and position <= last_signal
    context = {
        "run": run,
        "step": steps[0],
        "output_cap": JSON_CAP,
        "inline": False,
        "code_warning": run.code_warning(),
    }
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "runs/step.html#step-details", context)
    return render(request, "runs/step.html", context)


@require_GET
@login_required
def run_value(request: AuthenticatedHttpRequest, run_id: int, part: str) -> HttpResponse:
    """A run's whole input or output, uncut."""
    run = get_run(request, run_id)
    if part not in ("input", "output"):
        raise Http404
    return render(request, "runs/value.html", {"run": run, "part": part, "value": getattr(run, part)})


@require_GET
@login_required
def checkpoint_detail(request: AuthenticatedHttpRequest, run_id: int, checkpoint_id: int) -> HttpResponse:
    """One checkpoint with its whole output, and the form that replaces it."""
    run = get_run(request, run_id)
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id, run=run)
    context = checkpoint_context(request, run, checkpoint)
    if wants_fragment(request, f"edit-slot-{checkpoint.pk}"):
        return render(request, "runs/checkpoint.html#edit-form", {**context, "inline": True})
    return render(request, "runs/checkpoint.html", context)


def checkpoint_context(request, run: Run, checkpoint: Checkpoint, form: EditOutputForm | None = None):
    old = pretty(checkpoint.output) if checkpoint.status == CheckpointStatus.SUCCEEDED else ""
    attempts = Attempt.objects.filter(run=run, position=checkpoint.position).order_by("number", "id")
    continues = checkpoint.status != CheckpointStatus.FAILED
    editable = run.can_edit_and_continue if continues else run.can_edit
    return {
        "run": run,
        "checkpoint": checkpoint,
        "attempts": list(attempts),
        "attempt_groups": group_attempts(attempts),
        "form": form or EditOutputForm(initial={"output": old}),
        "editable": editable and checkpoint.is_live and request.user.has_perm("runs.operate"),
        # Editing any step but the failed one runs the steps after it again (Run.edit_and_continue).
        "continues": continues,
        "code_warning": run.code_warning() if editable else "",
    }


# --- operator actions ---------------------------------------------------------------


def after_action(request: AuthenticatedHttpRequest, run: Run, status: int = 200) -> HttpResponse:
    """htmx gets the run page's live section in place; a plain form post is sent back to the page."""
    if request.htmx:
        return render(
            request, "runs/detail.html#action-response", detail_context(request, run), status=status
        )
    return see_other(reverse("run_detail", args=[run.pk]))


def confirm_page(request: AuthenticatedHttpRequest, run: Run | None, question: str, **extra) -> HttpResponse:
    """The no-JavaScript confirmation: the same POST again, with confirmed=yes."""
    context = {
        "run": run,
        "question": question,
        "action": request.path,
        "hidden": hidden_fields(request),
        "reason": request.POST.get("reason", ""),
        "code_warning": run.code_warning() if run else "",
        **extra,
    }
    return render(request, "runs/confirm.html", context)


def invalid_reason(request: AuthenticatedHttpRequest, run: Run, form) -> HttpResponse:
    for errors in form.errors.values():
        messages.error(request, " ".join(errors))
    return after_action(request, run, status=422)


def perform(
    request: AuthenticatedHttpRequest,
    run: Run,
    form,
    question: str,
    operation: Callable[[dict[str, Any]], str | None],
    on_invalid: Callable[[Any], HttpResponse] | None = None,
) -> HttpResponse:
    """Validate, confirm, then call the model's operation; wrong states become messages."""
    if not form.is_valid():
        return (on_invalid or (lambda f: invalid_reason(request, run, f)))(form)
    if request.POST.get("confirmed") != "yes":
        return confirm_page(request, run, question, verb=question.split(" ", 1)[0].lower())
    try:
        done = operation(form.cleaned_data)
    except InvalidOperation as exc:
        messages.error(request, str(exc))
        return after_action(request, run, status=409)
    messages.success(request, done)
    return after_action(request, run)


@require_POST
@login_required
def run_resume(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)

    def resume(data) -> str:
        run.resume(by=request.user, reason=data["reason"])
        return f"Run {run.pk} resumed."

    return perform(request, run, ReasonForm(request.POST), f"Resume run {run.pk} ({run.workflow})?", resume)


@require_POST
@login_required
def run_cancel(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)

    def cancel(data) -> str:
        outcome = run.cancel(by=request.user, reason=data["reason"])
        if outcome == "cancelled":
            return f"Run {run.pk} cancelled."
        return f"Cancel requested: run {run.pk} stops now, interrupting its running step."

    return perform(request, run, ReasonForm(request.POST), f"Cancel run {run.pk} ({run.workflow})?", cancel)


@require_POST
@login_required
def run_terminate(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)

    def terminate(data) -> str:
        run.terminate(by=request.user, reason=data["reason"])
        return (
            f"Terminating run {run.pk}: its step is interrupted now; the run ends failed and can be resumed."
        )

    question = f"Terminate run {run.pk} ({run.workflow})?"
    return perform(request, run, ReasonForm(request.POST), question, terminate)


@require_POST
@login_required
def run_retry(request: AuthenticatedHttpRequest, run_id: int, position: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)

    def retry(data) -> str:
        reuse = request.POST.get("reuse_signals") == "yes"  # asked when the retry crosses a signal
        run.retry_from(position, by=request.user, reason=data["reason"], reuse_signals=reuse)
        return f"Run {run.pk} is retrying from step {position}; later steps were superseded." + (
            " The signals it had received are reused." if reuse else ""
        )

    question = (
        f"Retry run {run.pk} from step {position}? Step {position} and every step after it "
        "are superseded (kept, marked) and executed again with new idempotency keys."
    )
    return perform(request, run, ReasonForm(request.POST), question, retry)


@require_POST
@login_required
def run_signal(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)
    form = signal_form_for(run, request.POST)

    def send(data) -> str:
        run.send_signal(data["name"], data["payload"], by=request.user, reason=data["reason"])
        return f"Signal {data['name']!r} sent to run {run.pk}."

    def invalid(form) -> HttpResponse:
        context = detail_context(request, run, signal_form=form, signal_open=True)
        if request.htmx:
            response = render(request, "runs/detail.html#signal-form", context, status=422)
            return reswap(retarget(response, "#signal-form"), "outerHTML")
        return render(request, "runs/detail.html", context, status=422)

    name = request.POST.get("name", "")
    return perform(request, run, form, f"Send signal {name!r} to run {run.pk}?", send, invalid)


@require_POST
@login_required
def checkpoint_edit(request: AuthenticatedHttpRequest, run_id: int, position: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)
    checkpoint = run.checkpoints.live().filter(position=position).first()
    if checkpoint is None:
        messages.error(request, f"Run {run.pk} has no live checkpoint at position {position}.")
        return after_action(request, run, status=409)
    form = EditOutputForm(request.POST)

    def edit(data) -> str:
        run.edit_checkpoint(position, data["output"], by=request.user, reason=data["reason"])
        return f"Step {position} output replaced (the old one is kept, superseded); run {run.pk} resumed."

    def invalid(form) -> HttpResponse:
        context = {**checkpoint_context(request, run, checkpoint, form), "inline": bool(request.htmx)}
        if request.htmx:
            response = render(request, "runs/checkpoint.html#edit-form", context, status=422)
            return reswap(retarget(response, f"#edit-form-{checkpoint.pk}"), "outerHTML")
        return render(request, "runs/checkpoint.html", context, status=422)

    question = f"Replace the output of step {position} ({checkpoint.name}) of run {run.pk} and resume it?"
    return perform(request, run, form, question, edit, invalid)


# --- bulk actions ----------------------------------------------------------------------


def capped_count(runs: QuerySet[Run], cap: int) -> int:
    return runs.order_by().values("pk")[: cap + 1].count()


def back_to_list(request: AuthenticatedHttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        return HttpResponseLocation(url, target="#results", swap="outerHTML")
    return see_other(url)


@require_POST
@login_required
def run_bulk(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Resume or cancel many runs: first a count and a confirmation, then the work."""
    check_operator(request.user)
    form = BulkForm(request.POST)
    filters = RunFilterForm(request.POST)
    back = reverse("run_list") + ("?" + urlencode(filters.query_items()) if filters.is_filtered else "")
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(errors))
        return back_to_list(request, back)
    if form.cleaned_data["action"] == "retry":
        return bulk_retry(request, form, back)
    targets = form.target_runs(filters)
    if request.POST.get("confirmed") != "yes":
        return bulk_confirmation(request, form, targets, back)
    done, refused = bulk_apply(request, form, form.eligible(targets))
    verb = BULK_ACTIONS[form.cleaned_data["action"]][1]
    if done:
        messages.success(request, f"{verb.capitalize()}: {done} run{'s' if done != 1 else ''}.")
    if refused:
        messages.warning(request, f"{len(refused)} run(s) changed state meanwhile and were skipped.")
    if not done and not refused:
        messages.info(request, f"No run to {verb}.")
    return back_to_list(request, back)


def bulk_confirmation(request, form: BulkForm, targets: QuerySet[Run], back: str) -> HttpResponse:
    action = form.cleaned_data["action"]
    statuses, verb = BULK_ACTIONS[action]
    chosen = capped_count(targets, BULK_LIMIT * 100)
    eligible = capped_count(form.eligible(targets), BULK_LIMIT)
    extra = {
        "bulk": True,
        "verb": verb,
        "chosen": chosen,
        "chosen_capped": chosen > BULK_LIMIT * 100,
        "eligible": min(eligible, BULK_LIMIT),
        "over_limit": eligible > BULK_LIMIT,
        "skipped": max(chosen - eligible, 0),
        "statuses": " or ".join(Status(status).label for status in statuses),
        "back": back,
        "scope": form.cleaned_data["scope"],
    }
    question = f"{verb.capitalize()} {extra['eligible']} run{'s' if extra['eligible'] != 1 else ''}?"
    return bulk_confirm(request, question, extra, hidden_fields(request))


def bulk_confirm(
    request: AuthenticatedHttpRequest, question: str, extra: dict[str, Any], hidden: list[tuple[str, str]]
) -> HttpResponse:
    """A bulk action's count and question: for htmx, the list's <dialog> (opened at once),
    with no reason and no Yes when no run can be acted on; otherwise a page."""
    if wants_fragment(request, "bulk-panel"):
        context = {
            **extra,
            "question": question,
            "action": request.path,
            "hidden": hidden,
            "nothing_to_do": not extra["eligible"],
        }
        return render(request, "runs/confirm.html#bulk-dialog", context)
    return confirm_page(request, None, question, **extra, hidden=hidden)


def bulk_retry(request, form: BulkForm, back: str) -> HttpResponse:
    """Retry the selected runs from a named step, each at that name's position (runs.bulk):
    a count of the runs it applies to and a confirmation first, then one audited retry each."""
    plan = form.retry_plan(reuse_signals=request.POST.get("reuse_signals") == "yes")
    if request.POST.get("confirmed") != "yes":
        return bulk_retry_confirmation(request, form, plan, back)
    batch = plan.apply_batch(by=request.user, reason=form.cleaned_data["reason"])
    step = plan.from_step
    if batch.done:
        messages.success(
            request, f"Retried from step {step}: {len(batch.done)} run{'s' if len(batch.done) != 1 else ''}."
        )
    if batch.refused:
        messages.warning(request, f"{len(batch.refused)} run(s) changed state meanwhile and were skipped.")
    if batch.remaining and batch.done:
        messages.info(request, f"{batch.remaining} more to retry: confirm again for them.")
    if not batch.done and not batch.refused:
        messages.error(request, nothing_to_retry(plan, plan.selection.runs().count()))
    return back_to_list(request, back)


def nothing_to_retry(plan: BulkPlan, chosen: int) -> str:
    """Why a retry from a step applies to none of the selected runs."""
    runs = f"{chosen} selected run{'s' if chosen != 1 else ''}"
    names = plan.selection.step_names()
    if plan.from_step not in names:
        known = f" Their steps are named: {', '.join(names[:20])}." if names else " They have no steps yet."
        return f"None of the {runs} has a step named “{plan.from_step}”; nothing was changed.{known}"
    return (
        f"None of the {runs} can be retried from step {plan.from_step}: only failed, dead, succeeded "
        "or cancelled runs can; nothing was changed."
    )


def bulk_retry_confirmation(request, form: BulkForm, plan: BulkPlan, back: str) -> HttpResponse:
    preview = plan.preview()
    eligible, chosen = preview["eligible"], preview["selected"]
    extra = {
        "bulk": True,
        "retry": True,
        "verb": "retry",
        "from_step": plan.from_step,
        "chosen": chosen,
        "eligible": eligible,
        "skipped": max(chosen - eligible, 0),
        "sample": preview["sample"],
        "code_warnings": preview["code_warnings"],
        "signal_steps": preview["signal_steps"],
        "nothing": "" if eligible else nothing_to_retry(plan, chosen),
        "back": back,
        "scope": "selected",
    }
    question = f"Retry {eligible} run{'s' if eligible != 1 else ''} from step {plan.from_step}?"
    hidden = [(name, value) for name, value in hidden_fields(request) if name != "reuse_signals"]
    return bulk_confirm(request, question, extra, hidden)


@require_GET
@login_required
def run_bulk_steps(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The step names of the ticked runs, as <option>s for the "retry from step" box."""
    check_viewer(request.user)
    ids = parse_ids(request.GET.getlist("run"))[:PAGE_SIZE]
    names = Selection(ids=ids).step_names() if ids else []
    return render(request, "runs/list.html#step-names", {"step_names": names})


def hidden_fields(request) -> list[tuple[str, str]]:
    """The posted fields to carry through a confirmation, except those it asks again."""
    return [
        (name, value)
        for name, values in request.POST.lists()
        if name not in ("csrfmiddlewaretoken", "confirmed", "reason")
        for value in values
    ]


def bulk_apply(request, form: BulkForm, eligible: QuerySet[Run]) -> tuple[int, list[str]]:
    action = form.cleaned_data["action"]
    reason = form.cleaned_data["reason"]
    done, refused = 0, []
    for run in eligible.defer(*LIST_DEFERRED).order_by("pk")[:BULK_LIMIT]:
        try:
            if action == "resume":
                run.resume(by=request.user, reason=reason)
            else:
                run.cancel(by=request.user, reason=reason)
            done += 1
        except InvalidOperation as exc:
            refused.append(str(exc))
    return done, refused
