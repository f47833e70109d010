"""Tokens and cost for the dashboard: per step, per run, per workflow.

Totals come from ProviderCall, one row per request a provider received, failed
attempts included (a malformed reply was still billed), so they are what the
providers will charge. Calls outlive their runs and carry their workflow, so
reports per workflow never join runs. Per-step figures come from the step's checkpoint meta,
written by agentkit.llm when the call succeeded.

    accounting.totals_for_runs([run.pk for run in page])   # one query
    accounting.cost_by_workflow()                          # last 24 h, ended hours summed once
    accounting.llm_step(checkpoint.meta, earlier)          # no query (see agentkit.history)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db.models import Count, Q, Sum
from django.utils import timezone

from agentkit import history
from agentkit.models import ProviderCall, UsageHour, usage_by_workflow
from runs import jsoninput

# A value on an LLM step's page that cannot be formatted is shown raw, cut here.
META_CAP = 20_000
# The last messages of a model call's conversation shown with it; the earlier ones are
# counted. Each is cut at agentkit.llm.META_TEXT_LIMIT characters when recorded.
CONVERSATION_SHOWN = 100


class Usage(TypedDict):
    calls: int  # requests sent to a provider, failed attempts included
    failed_calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    latency_ms: int  # summed over the calls


class WorkflowCost(Usage):
    workflow: str
    runs: int


class ToolCallView(TypedDict):
    id: str
    name: str
    arguments: str  # pretty-printed JSON


class Turn(TypedDict):
    role: str  # system, user, assistant or tool
    text: str
    tool_calls: list[ToolCallView]
    tool_call_id: str
    tool_name: str
    is_reply: bool  # the model's answer in this step (the last turn)


class LLMStep(TypedDict):
    provider: str
    model: str
    label: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None
    latency_ms: int
    attempt: int
    finish_reason: str
    tools: list[str]
    conversation: list[Turn]
    messages: int  # in the whole conversation, the reply included
    earlier_not_shown: int  # messages before the first turn shown
    earlier_missing: bool  # some were not found (a checkpoint they are kept on is gone)


def _usage_aggregates() -> dict[str, Any]:
    return {
        "calls": Count("id"),
        "failed_calls": Count("id", filter=~Q(outcome="ok")),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost_usd": Sum("cost_usd"),
        "latency_ms": Sum("latency_ms"),
    }


def _usage(row: dict) -> Usage:
    input_tokens, output_tokens = row["input_tokens"] or 0, row["output_tokens"] or 0
    return {
        "calls": row["calls"],
        "failed_calls": row["failed_calls"],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cost_usd": round(row["cost_usd"] or 0.0, 8),
        "latency_ms": row["latency_ms"] or 0,
    }


def totals_for_runs(run_ids: Iterable[int]) -> dict[int, Usage]:
    """Token and cost totals per run, in one query; runs that made no model call are absent."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = (
        ProviderCall.objects.filter(run_id__in=ids)
        .values("run_id")
        .annotate(**_usage_aggregates())
        .order_by()
    )
    return {row["run_id"]: _usage(row) for row in rows}


def attach_totals(runs: Sequence[Any], attribute: str = "llm_usage") -> Sequence[Any]:
    """Set `run.llm_usage` (a Usage, or None) on each run of a page, in one query."""
    totals = totals_for_runs(run.pk for run in runs)
    for run in runs:
        setattr(run, attribute, totals.get(run.pk))
    return runs


def cost_by_workflow(hours: float = 24, now: datetime | None = None) -> list[WorkflowCost]:
    """Model usage per workflow over the last `hours`, most expensive first.

    Grouped by the workflow stored on each call, so the calls of pruned runs still count.
    The whole hours that ended are read from UsageHour (each summed once); only the
    partial hours at both ends of the window are summed from the calls.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=hours)
    first = _hour_after(since)
    end = max((now - UsageHour.SETTLE).replace(minute=0, second=0, microsecond=0), first)
    totals: dict[str, dict[str, Any]] = {}
    runs: dict[str, set[int]] = {}

    def add(workflow: str, usage: dict[str, Any], run_ids: set[int]) -> None:
        into = totals.setdefault(workflow, dict.fromkeys(usage, 0))
        for name, value in usage.items():
            into[name] += value
        runs.setdefault(workflow, set()).update(run_ids)

    for row in UsageHour.between(first, end):
        add(row.workflow, {name: getattr(row, name) for name in USAGE_FIELDS}, row.runs)
    for start, stop in ((since, first), (end, None)):
        if stop is None or start < stop:
            for workflow, (usage, run_ids) in usage_by_workflow(start, stop).items():
                add(workflow, usage, run_ids)
    rows = [
        {"workflow": workflow, "runs": len(runs[workflow]), **_usage(usage)}
        for workflow, usage in totals.items()
    ]
    return sorted(rows, key=lambda row: (-row["cost_usd"], row["workflow"]))


USAGE_FIELDS = ("calls", "failed_calls", "input_tokens", "output_tokens", "cost_usd", "latency_ms")


def _hour_after(moment: datetime) -> datetime:
    """The first whole hour that starts at or after `moment`."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return hour if hour == moment else hour + timedelta(hours=1)


# --- one LLM step, for the run page -----------------------------------------------


def llm_step(meta: dict | None, earlier: Iterable[tuple[int, Any]] = ()) -> LLMStep | None:
    """What the run page shows for a model call's checkpoint; None for other steps.

    Steps written by agentkit.llm have `kind: "llm"` and a conversation; any other step
    that reports a model and token counts on its meta gets the figures without one.
    A call that kept only its new messages gets the rest from `earlier`, the run's
    earlier checkpoints as agentkit.history.rebuild reads them (history.earlier_than).
    """
    if not isinstance(meta, dict):
        return None
    if meta.get("kind") != "llm" and not ("model" in meta and "input_tokens" in meta):
        return None
    request = meta.get("request") or {}
    response = meta.get("response") or {}
    input_tokens, output_tokens = _int(meta.get("input_tokens")), _int(meta.get("output_tokens"))
    return {
        "provider": str(meta.get("provider") or ""),
        "model": str(meta.get("model") or ""),
        "label": str(meta.get("label") or ""),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cost_usd": meta.get("cost_usd"),
        "latency_ms": _int(meta.get("latency_ms")),
        "attempt": _int(meta.get("attempt")) or 1,
        "finish_reason": str(response.get("finish_reason") or ""),
        "tools": [str(name) for name in request.get("tools") or []],
        **conversation(meta, earlier),
    }


class Conversation(TypedDict):
    conversation: list[Turn]
    messages: int
    earlier_not_shown: int
    earlier_missing: bool


def conversation(meta: dict, earlier: Iterable[tuple[int, Any]] = ()) -> Conversation:
    """The last messages the model was sent, then its reply, as readable turns."""
    response = meta.get("response")
    replied = isinstance(response, dict)
    sent = history.rebuild(meta.get("request"), earlier, CONVERSATION_SHOWN - replied)
    turns = [_turn(message, is_reply=False) for message in sent.messages]
    if replied:
        turns.append(_turn({"role": "assistant", **response}, is_reply=True))
    return {
        "conversation": turns,
        "messages": sent.total + replied,
        "earlier_not_shown": sent.omitted,
        "earlier_missing": sent.missing,
    }


def _turn(message: dict, *, is_reply: bool) -> Turn:
    role = str(message.get("role") or "?")
    return {
        "role": role,
        "text": _readable(message.get("content")) if role == "tool" else _text(message.get("content")),
        "tool_calls": [
            {
                "id": str(call.get("id") or ""),
                "name": str(call.get("name") or ""),
                "arguments": _pretty(call.get("arguments")),
            }
            for call in message.get("tool_calls") or []
            if isinstance(call, dict)
        ],
        "tool_call_id": str(message.get("tool_call_id") or ""),
        "tool_name": str(message.get("name") or ""),
        "is_reply": is_reply,
    }


def _text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else _pretty(content)


def _readable(content: Any) -> str:
    """A tool result: JSON text is pretty-printed, anything else shown as it is."""
    if isinstance(content, str):
        try:
            return _pretty(jsoninput.parse(content, check=False))
        except ValueError:
            return content
    return _text(content)


def _pretty(value: Any) -> str:
    return jsoninput.pretty(value, cap=META_CAP, sort_keys=True, default=str)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
