"""The run page: a run's steps, attempts, children and audit log, kept live while it moves."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Count, Q, Sum, TextField
from django.db.models.functions import Cast, Substr
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from agentkit import accounting
from runs.forms import EditOutputForm, SignalForm, pretty
from runs.models import Run, Status, WaitKind, WorkerProcess, code_versions_from
from runs.templatetags.dashboard import JSON_CAP
from runs.views.common import AuthenticatedHttpRequest, get_run, login_required, url_filler, wants_fragment
from runs.views.run_list import LIST_DEFERRED
from steps.models import Attempt, AttemptGroup, Branch, Checkpoint, CheckpointStatus, group_attempts

# Runs with more steps than this refresh their page every 10 s instead of 2 s.
LONG_RUN_STEPS = 200
# A finished run's page, or a long run's, polls this often (a 204 while nothing changed).
FINISHED_POLL = "8s"
# Child runs listed on a run page.
CHILDREN_SHOWN = 50
# Audit entries shown on a run page, newest first.
AUDIT_SHOWN = 200
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
        """A model call's figures and its own messages; None for other steps, and on compact
        lines, which do not read the meta."""
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
        # Read already: a model call's step finds its earlier messages here, without a query.
        "page_checkpoints": [cp for step in steps for cp in step.all_checkpoints] if inline else None,
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
