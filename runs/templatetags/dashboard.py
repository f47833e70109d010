"""Template helpers of the operator dashboard: durations, JSON blocks, SVG pictures.

Pictures are computed here as numbers and drawn by templates, so every piece of
text that reaches the page (step names, error messages) is autoescaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()

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
def ago(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    delta = timezone.now() - moment
    if delta.total_seconds() < 0:
        return f"in {duration(-delta)}"
    return f"{duration(delta)} ago"


# --- JSON ------------------------------------------------------------------------------


@dataclass
class JSONBlock:
    text: str
    size: int
    truncated: bool
    collapsed: bool

    @property
    def preview(self) -> str:
        first = self.text.split("\n", 1)[0]
        return first[:80]


@register.simple_tag
def json_block(value: Any, cap: int = JSON_CAP) -> JSONBlock:
    """Pretty JSON for a <pre>, cut at `cap` characters; the template escapes it."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    size = len(text)
    truncated = size > cap
    if truncated:
        text = text[:cap]
    return JSONBlock(text=text, size=size, truncated=truncated, collapsed=size > JSON_COLLAPSE)


@register.filter
def compact_json(value: Any, limit: int = 120) -> str:
    """One line of JSON, cut to `limit` characters, for tables."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register.filter
def truncate_chars(value: str, limit: int = 160) -> str:
    value = value or ""
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --- the run timeline -------------------------------------------------------------


@dataclass
class Bar:
    x: float
    width: float
    kind: str  # css class: a checkpoint status, "attempt", or "waiting"
    superseded: bool
    title: str


@dataclass
class Lane:
    y: float
    height: float
    label: str
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Timeline:
    width: int
    height: float
    label_width: int
    lanes: list[Lane]
    ticks: list[tuple[float, str]]
    show_labels: bool
    now_x: float | None


LABEL_WIDTH = 190
CHART_WIDTH = 1000
AXIS_HEIGHT = 18
MAX_HEIGHT = 520


def _bar_title(position: int, name: str, what: str, seconds: float) -> str:
    return f"#{position} {name} · {what} · {duration(seconds)}"


def build_timeline(run, steps, now: datetime | None = None) -> Timeline | None:
    """Lay out one lane per step position: failed attempts, superseded and live checkpoints."""
    now = now or timezone.now()
    spans = [(c.started_at, c.finished_at) for s in steps for c in s.all_checkpoints]
    spans += [(a.started_at, a.finished_at) for s in steps for a in s.attempts]
    if not spans:
        return None
    start = min(begin for begin, _ in spans)
    end = max(finish for _, finish in spans)
    if run.is_active:
        end = max(end, now)
    total = max((end - start).total_seconds(), 0.001)
    scale = (CHART_WIDTH - LABEL_WIDTH - 10) / total

    def place(begin, finish) -> tuple[float, float]:
        x = LABEL_WIDTH + (begin - start).total_seconds() * scale
        return x, max((finish - begin).total_seconds() * scale, 1.5)

    row = min(18.0, max(MAX_HEIGHT / max(len(steps), 1), 0.5))
    lanes = []
    for index, step in enumerate(steps):
        lane = Lane(y=AXIS_HEIGHT + index * row, height=row, label=f"{step.position} {step.name}"[:30])
        for attempt in step.attempts:
            x, width = place(attempt.started_at, attempt.finished_at)
            what = f"attempt {attempt.number} failed: {attempt.error_type}"
            seconds = (attempt.finished_at - attempt.started_at).total_seconds()
            lane.bars.append(
                Bar(x, width, "attempt", attempt.superseded_at is not None, _bar_title(
                    step.position, step.name, what, seconds
                ))
            )
        for checkpoint in step.all_checkpoints:
            x, width = place(checkpoint.started_at, checkpoint.finished_at)
            what = checkpoint.status + (" (superseded)" if checkpoint.superseded_at else "")
            seconds = checkpoint.duration.total_seconds()
            lane.bars.append(
                Bar(x, width, checkpoint.status, checkpoint.superseded_at is not None, _bar_title(
                    step.position, step.name, what, seconds
                ))
            )
        lanes.append(lane)
    ticks = [(LABEL_WIDTH + f * (CHART_WIDTH - LABEL_WIDTH - 10), duration(total * f)) for f in (0, 0.25, 0.5, 0.75, 1)]
    now_x = LABEL_WIDTH + (now - start).total_seconds() * scale if run.is_active else None
    return Timeline(
        width=CHART_WIDTH,
        height=AXIS_HEIGHT + len(steps) * row + 2,
        label_width=LABEL_WIDTH,
        lanes=lanes,
        ticks=ticks,
        show_labels=row >= 10,
        now_x=now_x,
    )


@register.inclusion_tag("runs/_timeline.html")
def run_timeline(run, steps):
    return {"timeline": build_timeline(run, steps), "run": run}


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


def build_hourly_chart(hours: list[dict], height: int = 110, width: int = 720) -> dict:
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
            label = hour["hour"].strftime("%H:00")
            segments.append(Segment(top, size, status, f"{label} UTC: {count} {status}"))
        label = hour["hour"].strftime("%H") if index % 3 == 0 else ""
        columns.append(Column(index * slot + 1, slot - 2, label, segments))
    return {"columns": columns, "height": height, "width": width, "peak": peak, "plot": plot}


@register.inclusion_tag("runs/_chart.html")
def hourly_chart(hours):
    return build_hourly_chart(hours)
