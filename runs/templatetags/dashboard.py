"""Template helpers of the operator dashboard: durations, JSON blocks, SVG pictures.

Pictures are computed here as numbers and drawn by templates, so every piece of
text that reaches the page (step names, error messages) is autoescaped. Two
things repeat a thousand times on a long run's page, the compact step lines and
the timeline's bars; those are drawn here, with every piece of text passed
through `_escape`, because the template engine takes ~50 µs per line.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, NamedTuple

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from runs import jsoninput

register = template.Library()


def _escape(text: Any) -> str:
    """What autoescaping does to text (Django's escape is html.escape), without its
    lazy-string checks, for the markup drawn here a thousand times a page."""
    return html.escape(str(text))


# Inline JSON beyond this many characters is cut, with a link to the full value.
JSON_CAP = 20_000
# Inline JSON beyond this many characters starts collapsed.
JSON_COLLAPSE = 600


# --- durations -------------------------------------------------------------------


def _seconds(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@register.filter
def duration(value) -> str:
    """A compact human duration: 340 ms, 4.2 s, 3 m 05 s, 2 h 10 m, 3 d 4 h."""
    seconds = _seconds(value)
    if seconds is None:
        return "–"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@register.filter
def timeuntil_seconds(end: datetime | None, start: datetime | None) -> float | None:
    """Seconds from start to end, for `duration`: {{ finished|timeuntil_seconds:started|duration }}."""
    if end is None or start is None:
        return None
    return (end - start).total_seconds()


@register.filter
def ago(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    delta = timezone.now() - moment
    if delta.total_seconds() < 0:
        return f"in {duration(-delta)}"
    return f"{duration(delta)} ago"


@register.simple_tag
def phrase(text: str, *args) -> str:
    """str.format for templates: {% phrase "Retry from step {}?" step.position as question %}.

    The result is plain text; the template escapes it where it is shown.
    """
    return text.format(*args)


BETWEEN_TAGS = re.compile(r">\s+<")


class CompactNode(template.Node):
    def __init__(self, nodelist):
        self.nodelist = nodelist

    def render(self, context) -> str:
        # One space where template indentation was: renders the same (outside <pre>,
        # whose contents here are text, never tags) and a long run's page shrinks by a third.
        return BETWEEN_TAGS.sub("> <", self.nodelist.render(context))


@register.tag
def compact(parser, token):
    """{% compact %}...{% endcompact %}: collapse the whitespace between tags to one space."""
    nodelist = parser.parse(("endcompact",))
    parser.delete_first_token()
    return CompactNode(nodelist)


# --- JSON ------------------------------------------------------------------------------


# JSON this short (on one line) is shown on one line.
JSON_ONE_LINE = 100


@dataclass
class JSONBlock:
    text: str
    size: int
    truncated: bool
    collapsed: bool
    one_line: str = ""
    raw: bool = False  # too deeply nested (or otherwise unfit) to format: shown as compact text

    @property
    def preview(self) -> str:
        first = self.text.split("\n", 1)[0]
        return first[:80]


@register.simple_tag
def json_block(value: Any, cap: int = JSON_CAP) -> JSONBlock:
    """Pretty JSON for a <pre>, cut at `cap` characters; the template escapes it. A value
    that cannot be formatted (a row nested deeper than the encoder goes) is shown raw."""
    text, formatted = jsoninput.render(value, indent=2, cap=cap)
    if not formatted:
        cut = len(text) >= cap
        return JSONBlock(text=text[:cap], size=len(text), truncated=cut, collapsed=True, raw=True)
    size = len(text)
    if size <= JSON_ONE_LINE * 3:
        line = jsoninput.compact(value, separators=(", ", ": "))
        if len(line) <= JSON_ONE_LINE:
            return JSONBlock(text=text, size=size, truncated=False, collapsed=False, one_line=line)
    truncated = size > cap
    if truncated:
        text = text[:cap]
    return JSONBlock(text=text, size=size, truncated=truncated, collapsed=size > JSON_COLLAPSE)


@register.filter
def compact_json(value: Any, limit: int = 120) -> str:
    """One line of JSON, cut to `limit` characters, for tables (raw if it cannot be formatted)."""
    text = jsoninput.compact(value, cap=limit + 1, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register.filter
def truncate_chars(value: str, limit: int = 160) -> str:
    value = value or ""
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --- the run timeline -------------------------------------------------------------


class Bar(NamedTuple):
    x: float
    y: float
    width: float
    height: float
    kind: str  # a checkpoint's or branch's status, or "attempt" (a failed attempt)
    superseded: bool
    title: str


class Lane(NamedTuple):
    label: str
    text_y: float
    bars: tuple[Bar, ...]  # tuples of plain values: the garbage collector soon stops tracking them


@dataclass
class Timeline:
    width: int
    height: float
    lanes: list[Lane]
    ticks: list[dict[str, Any]]
    show_labels: bool
    now_x: float | None
    # With too many lanes to name each, the first and last position are named.
    edge_labels: list[dict[str, Any]] = field(default_factory=list)

    def marks(self) -> SafeString:
        """Every lane's label and bars as SVG; step names and errors are escaped."""
        parts = []
        for lane in self.lanes:
            if self.show_labels:
                parts.append(f'<text class="lane-label" x="4" y="{lane.text_y}">{_escape(lane.label)}</text>')
            for bar in lane.bars:
                kind = _escape(bar.kind) + (" superseded" if bar.superseded else "")
                parts.append(
                    f'<rect class="bar tl-{kind}" x="{bar.x}" y="{bar.y}" width="{bar.width}" '
                    f'height="{bar.height}"><title>{_escape(bar.title)}</title></rect>'
                )
        return mark_safe("".join(parts))


CHART_WIDTH = 1000
AXIS_HEIGHT = 16
# Lanes get up to 18 units each; a long run's lanes share this much height.
MAX_LANES_HEIGHT = 540
# Bars are at least this wide, so that a millisecond step is still visible.
MIN_BAR = 4.0


class _Scale:
    def __init__(self, start: datetime, end: datetime, left: float, now: datetime):
        self.start = start
        self.now = now
        self.left = left
        self.span = CHART_WIDTH - left - 10
        self.seconds = max((end - start).total_seconds(), 0.001)
        self.per_second = self.span / self.seconds

    def x(self, moment: datetime) -> float:
        return round(self.left + (moment - self.start).total_seconds() * self.per_second, 2)

    def width(self, begin: datetime, finish: datetime) -> float:
        return round(max((finish - begin).total_seconds() * self.per_second, MIN_BAR), 2)

    def ticks(self) -> list[dict[str, Any]]:
        marks = ((0, "start"), (0.25, "middle"), (0.5, "middle"), (0.75, "middle"), (1, "end"))
        return [
            {"x": round(self.left + f * self.span, 2), "label": duration(self.seconds * f), "anchor": anchor}
            for f, anchor in marks
        ]


# A wait narrower than this (in chart units) is not drawn: a thousand steps a few
# milliseconds apart would otherwise be covered in hatching.
MIN_WAIT = 1.5


def _wait_kind(step) -> str:
    """What a step at the end of a wait was waiting for, from its name."""
    name = step.checkpoint.name
    if name.startswith("signal:"):
        return "signal wait"
    if name.startswith("child:"):
        return "child run"
    if name.startswith("parallel:"):
        return "parallel branches"
    if step.superseded:
        return "stopped until an operator acted"
    if step.attempts:
        return "retry backoff"
    return "wait (rate limit or queue)"


def waits(steps, run, now: datetime) -> dict[int, list[tuple[datetime, datetime, str]]]:
    """The real length of every wait, by the position whose lane draws it.

    Checkpoints record when a step's call started and ended, so a wait shows as the gap
    between one live checkpoint's end and the next one's start: after a sleep (recorded
    when it began) it belongs to the sleep's lane; before a signal, a child run, a rate
    limit or a retry it belongs to the step that waited. A run sleeping now waits until now.
    """
    live = [step for step in steps if step.checkpoint is not None]
    found: dict[int, list[tuple[datetime, datetime, str]]] = {}
    for previous, step in pairwise(live):
        begin, end = previous.checkpoint.finished_at, step.checkpoint.started_at
        if end <= begin:
            continue
        if previous.checkpoint.name == "sleep":
            found.setdefault(previous.position, []).append((begin, end, "sleep"))
        else:
            found.setdefault(step.position, []).append((begin, end, _wait_kind(step)))
    if live and run.is_active and live[-1].checkpoint.name == "sleep":
        last = live[-1]
        found.setdefault(last.position, []).append((last.checkpoint.finished_at, now, "sleep"))
    return found


def _lane(step, index: int, row: float, scale: _Scale, step_waits=()) -> Lane:
    top = AXIS_HEIGHT + index * row
    gap = row * 0.15 if row >= 4 else 0
    bars = []

    def bar(begin, finish, kind, superseded, what) -> Bar:
        seconds = (finish - begin).total_seconds()
        title = f"#{step.position} {step.name} · {what} · {duration(seconds)}"
        x, width = scale.x(begin), scale.width(begin, finish)
        return Bar(x, round(top + gap, 2), width, round(row - 2 * gap, 2), kind, superseded, title)

    for begin, finish, what in step_waits:
        if (finish - begin).total_seconds() * scale.per_second >= MIN_WAIT:
            # Drawn at its true length, never widened: a wait is not a call.
            seconds = (finish - begin).total_seconds()
            title = f"#{step.position} {step.name} · {what} · {duration(seconds)}"
            width = round(seconds * scale.per_second, 2)
            bars.append(
                Bar(scale.x(begin), round(top + gap, 2), width, round(row - 2 * gap, 2), "wait", False, title)
            )
    for attempt in step.attempts:
        what = f"attempt {attempt.number} failed: {attempt.error_type}"
        superseded = bool(attempt.superseded_at)
        bars.append(bar(attempt.started_at, attempt.finished_at, "attempt", superseded, what))
    for branch in step.branches:
        if branch.started_at is None:
            continue
        what = f"branch {branch.index} {branch.name}: {branch.status}"
        finished = branch.finished_at or scale.now
        kind = branch.status if branch.status in ("succeeded", "failed") else "running"
        bars.append(bar(branch.started_at, finished, kind, bool(branch.superseded_at), what))
    for cp in step.all_checkpoints:
        what = cp.status + (" (superseded)" if cp.superseded_at else "")
        bars.append(bar(cp.started_at, cp.finished_at, cp.status, bool(cp.superseded_at), what))
    return Lane(f"{step.position} {step.name}"[:26], round(top + row * 0.75, 2), tuple(bars))


def build_timeline(run, steps, now: datetime | None = None) -> Timeline | None:
    """One lane per step position holding its waits, failed attempts and checkpoints, on one
    wall-clock axis."""
    now = now or timezone.now()
    spans = [(c.started_at, c.finished_at) for s in steps for c in s.all_checkpoints]
    spans += [(a.started_at, a.finished_at) for s in steps for a in s.attempts]
    spans += [(b.started_at, b.finished_at or now) for s in steps for b in s.branches if b.started_at]
    if not spans:
        return None
    start = min(begin for begin, _ in spans)
    end = max(finish for _, finish in spans)
    if run.is_active:
        end = max(end, now)
    row = min(18.0, MAX_LANES_HEIGHT / len(steps))
    show_labels = row >= 10
    scale = _Scale(start, end, left=190 if show_labels else 60, now=now)
    height = round(AXIS_HEIGHT + len(steps) * row + 2, 2)
    edges = []
    if not show_labels:
        edges = [
            {"y": AXIS_HEIGHT + 10, "text": f"#{steps[0].position}"},
            {"y": height - 2, "text": f"#{steps[-1].position}"},
        ]
    found = waits(steps, run, now)
    return Timeline(
        width=CHART_WIDTH,
        height=height,
        lanes=[
            _lane(step, index, row, scale, found.get(step.position, ())) for index, step in enumerate(steps)
        ],
        ticks=scale.ticks(),
        show_labels=show_labels,
        now_x=scale.x(now) if run.is_active else None,
        edge_labels=edges,
    )


@register.inclusion_tag("runs/_timeline.html")
def run_timeline(run, steps):
    return {"timeline": build_timeline(run, steps), "run": run}


# --- compact step lines ----------------------------------------------------------------


def _plural(count: int, word: str, plural: str = "") -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def step_facts(step, status: str, run) -> str:
    """The facts of a compact step line, as escaped HTML."""
    cp = step.checkpoint
    facts = []
    if cp is not None:
        epoch = f" · epoch {cp.epoch}" if cp.epoch else ""
        facts.append(
            f'<span class="muted">{duration(cp.duration)} · {_plural(cp.attempts, "attempt")}{epoch}</span>'
        )
        if cp.edited_from_id:
            facts.append('<span class="tag">edited by an operator</span>')
    elif status == "retrying":
        retrying = run.wait_kind == "retry" and run.wake_at
        wake = f"; next attempt {local_time(run.wake_at, 'ago')}" if retrying else ""
        facts.append(f'<span class="muted">{_plural(step.live_attempts, "failed attempt")}{wake}</span>')
    if step.superseded:
        facts.append(f'<span class="tag">{len(step.superseded)} superseded</span>')
    if step.branches:
        live = [branch for branch in step.branches if branch.superseded_at is None]
        done = sum(1 for branch in live if branch.status in ("succeeded", "failed"))
        facts.append(f'<span class="tag">{done} of {_plural(len(live), "branch", "branches")} done</span>')
    if status == "failed":
        facts.append(
            f'<span class="preview"><strong class="etype">{_escape(cp.error_type)}</strong> '
            f'<span class="emsg">{_escape(truncate_chars(cp.error_message, 160))}</span></span>'
        )
    elif preview := step.preview:
        facts.append(f'<span class="preview mono">{_escape(preview)}</span>')
    return " ".join(facts)


@register.simple_tag
def step_lines(run, steps) -> SafeString:
    """One line per step that opens (htmx) on everything recorded at its position;
    without JavaScript, the step's own page."""
    lines = []
    for step in steps:
        status, url = step.status, _escape(step.url)
        label = _escape(status)
        lines.append(
            f'<li id="step-{step.position}" class="step st-{label}">'
            f'<details class="step-more" hx-get="{url}" hx-trigger="toggle once" hx-target="find .step-body">'
            f'<summary class="step-head"><span class="pos">#{step.position}</span> '
            f'<span class="name mono">{_escape(step.name)}</span> '
            f'<span class="badge st-{label}">{label}</span> '
            f"{step_facts(step, status, run)}</summary>"
            f'<div class="step-body"><a href="{url}">Show this step</a></div></details></li>'
        )
    return mark_safe("".join(lines))


# --- runs per hour ------------------------------------------------------------------

CHART_OUTCOMES = ("succeeded", "failed", "dead", "cancelled", "running", "waiting", "pending")


@dataclass
class Segment:
    y: float
    height: float
    status: str
    title: str


@dataclass
class Column:
    x: float
    width: float
    label: str
    segments: list[Segment]


def _hour_label(hour: datetime) -> str:
    """An hour's column label in the viewer's zone: "19", or "05:30" where the zone is offset
    by part of an hour from UTC (the columns are UTC hours)."""
    local = timezone.localtime(hour)
    return f"{local:%H}" if local.minute == 0 else f"{local:%H:%M}"


def build_hourly_chart(hours: list[dict], height: int = 130, width: int = 720) -> dict:
    """Stacked columns, one per hour; `hours` holds {"hour": datetime, status: count, ...}."""
    peak = max((sum(h.get(s, 0) for s in CHART_OUTCOMES) for h in hours), default=0) or 1
    slot = width / max(len(hours), 1)
    plot = height - 16
    columns = []
    for index, hour in enumerate(hours):
        top = plot
        segments = []
        for status in CHART_OUTCOMES:
            count = hour.get(status, 0)
            if not count:
                continue
            size = count / peak * (plot - 4)
            top -= size
            when = f"{day_label(hour['hour'])} ({hour['hour'].astimezone(UTC):%H:%M} UTC)"
            segments.append(Segment(round(top, 2), round(size, 2), status, f"{when}: {count} {status}"))
        label = _hour_label(hour["hour"]) if index % 3 == 0 else ""
        columns.append(Column(round(index * slot + 1, 2), round(slot - 2, 2), label, segments))
    return {"columns": columns, "height": height, "width": width, "peak": peak, "plot": plot}


@register.inclusion_tag("runs/_chart.html")
def hourly_chart(hours):
    return build_hourly_chart(hours)


# --- times in the viewer's zone -----------------------------------------------------


def day_label(moment: datetime, now: datetime | None = None, *, seconds: bool = False) -> str:
    """ "today 19:00", "yesterday 19:00", or the date for anything older, in the active time
    zone (the viewer's: runs.viewer_zone)."""
    now = timezone.localtime(now or timezone.now())
    local = timezone.localtime(moment)
    days = (now.date() - local.date()).days
    day = {0: "today", 1: "yesterday", -1: "tomorrow"}.get(days, f"{local:%Y-%m-%d}")
    return f"{day} {local:%H:%M:%S}" if seconds else f"{day} {local:%H:%M}"


def utc_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@register.filter
def local_time(moment: datetime | None, style: str = "") -> str:
    """Every time the dashboard shows: {{ run.created_at|local_time }} is "today 19:00" in the
    viewer's zone, "seconds" adds seconds, "ago" says "5 m ago" (or "in 2 h") and gives the
    day and time on hover. UTC is always in the title, and the <time> carries the instant."""
    if moment is None or moment == "":
        return "–" if style == "ago" else ""
    if style == "ago":
        text, title = ago(moment), f"{day_label(moment)} · {utc_text(moment)}"
    else:
        text, title = day_label(moment, seconds=style == "seconds"), utc_text(moment)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', moment.astimezone(UTC).isoformat(), title, text
    )
