"""The inbox: runs waiting for a person's decision, nearest deadline first, answered in place.

A run waits for a person when its workflow calls ctx.wait_for_signal(). What it asks is
the wait's prompt when the workflow gave one, else the "summary" in the output of the step
just before the wait (an agent's proposal, say); that output is shown too, next to the
buttons. Always escaped and capped. A decision
goes through Run.decide, which refuses a run that has moved on or was answered already.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.functional import SimpleLazyObject
from django.views.decorators.http import require_GET, require_POST

from runs.forms import DecisionForm
from runs.models import InvalidOperation, Run
from runs.views.actions import confirm_page
from runs.views.common import (
    AuthenticatedHttpRequest,
    can_view,
    check_viewer,
    get_run,
    login_required,
    see_other,
)
from steps.models import Checkpoint

# Runs listed at once; the count in the navigation stops counting here too.
INBOX_SHOWN = 100


def attach_questions(runs: list[Run]) -> None:
    """Give each run the step output it waits on (`asked`) and what it asks (`summary`: the
    workflow's prompt, else the summary in that output), in one query."""
    wanted = Q()
    for run in runs:
        if run.wait_position:
            wanted |= Q(run_id=run.pk, position=run.wait_position - 1)
    found = {}
    if wanted:
        rows = Checkpoint.objects.live().filter(wanted).values_list("run_id", "name", "output")
        found = {run_id: (name, output) for run_id, name, output in rows}
    for run in runs:
        run.asked_step, run.asked = found.get(run.pk, ("", None))
        run.summary = run.asks(run.asked)


def inbox_context(retry: DecisionForm | None = None, retry_run: int | None = None) -> dict[str, Any]:
    runs = list(Run.objects.awaiting_decision().defer("output", "error_traceback")[:INBOX_SHOWN])
    attach_questions(runs)
    for run in runs:
        # A refused payload comes back in its own box, as typed.
        run.typed_payload = retry.data.get("payload", "") if retry is not None and run.pk == retry_run else ""
    return {"runs": runs, "shown": INBOX_SHOWN, "retry": retry, "retry_run": retry_run}


@require_GET
@login_required
def inbox(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    context = inbox_context()
    if request.htmx and request.htmx.target == "inbox-list" and not request.htmx.history_restore_request:
        return render(request, "runs/inbox.html#inbox-list", context)
    return render(request, "runs/inbox.html", context)


def after_decision(request: AuthenticatedHttpRequest, run: Run, status: int = 200) -> HttpResponse:
    """The inbox redrawn in place for htmx; without JavaScript, the run's own page."""
    if request.htmx:
        return render(request, "runs/inbox.html#inbox-list", inbox_context(), status=status)
    return see_other(reverse("run_detail", args=[run.pk]))


@require_POST
@login_required
def inbox_decide(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, f"Run {run.pk}: {' '.join(errors)}")
        context = inbox_context(retry=form, retry_run=run.pk)
        page = "runs/inbox.html#inbox-list" if request.htmx else "runs/inbox.html"
        return render(request, page, context, status=422)
    decision = form.cleaned_data["decision"]
    verb = {"approve": "approve", "reject": "reject"}.get(decision, "send")
    if request.POST.get("confirmed") != "yes":
        attach_questions([run])
        question = f"{verb.capitalize()} run {run.pk} ({run.workflow})?"
        return confirm_page(request, run, question, verb=verb, asked=run.summary)
    username = request.user.get_username()
    at = form.cleaned_data["at"] if form.cleaned_data["at"] is not None else run.wait_position
    try:
        run.decide(form.signal_payload(username), at=at, by=request.user, reason=form.cleaned_data["reason"])
    except InvalidOperation as exc:
        messages.error(request, str(exc))
        return after_decision(request, run, 409)
    done = {"approve": "approved", "reject": "rejected"}.get(decision, "answered")
    messages.success(request, f"Run {run.pk} {done}; it continues.")
    return after_decision(request, run)


def navigation(request: HttpRequest) -> dict[str, Any]:
    """What the navigation shows a viewer: the Workers and Inbox links, and beside "Inbox"
    the runs waiting for a decision, capped.
    Lazy: counted only when a whole page draws the navigation, never for a fragment."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not can_view(user):
        return {}

    def count() -> dict[str, Any]:
        waiting = Run.objects.awaiting_decision().order_by().values("pk")[: INBOX_SHOWN + 1].count()
        return {"count": min(waiting, INBOX_SHOWN), "capped": waiting > INBOX_SHOWN}

    return {"dashboard_viewer": True, "inbox": SimpleLazyObject(count)}
