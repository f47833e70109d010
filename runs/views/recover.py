"""The bulk recovery page: choose runs by filter, see how many and which, then resume,
cancel, retry from a step or retry now, batch by batch.

Reading the page needs view access; acting needs runs.operate and a confirmation. The
work is runs.bulk's: this module only parses the form and renders what it answers.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from runs.bulk import ACTIONS, RETRYING, BulkError, retrying_runs
from runs.forms import RecoverForm
from runs.views.common import (
    AuthenticatedHttpRequest,
    check_operator,
    check_viewer,
    hidden_fields,
    login_required,
)

# Runs backing off listed on the page, soonest next attempt first.
RETRYING_SHOWN = 50


@require_http_methods(["GET", "POST"])
@login_required
def recover(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "POST":
        check_operator(request.user)
        return act(request)
    check_viewer(request.user)
    if not request.GET:
        form = RecoverForm(initial={"action": "retry", "status": "failed"})
        return render(request, "runs/recover.html", {"form": form})
    return render(request, "runs/recover.html", page_context(request, RecoverForm(request.GET)))


def page_context(request: AuthenticatedHttpRequest, form: RecoverForm, **extra) -> dict[str, Any]:
    context: dict[str, Any] = {"form": form, **extra}
    if not form.is_valid():
        return context
    try:
        plan = form.plan()
    except BulkError as exc:
        context["problem"] = str(exc)
        return context
    preview = plan.preview()
    context.update(plan=plan, preview=preview, verb=ACTIONS[plan.action][0], query=request.GET.urlencode())
    context["question"] = question(plan.action, preview["eligible"], plan.from_step)
    context["button"] = button(plan.action, preview["eligible"], plan.from_step)
    # The filters travel with the action; the confirmation asks the reason (and, across a
    # received signal, whether to reuse it) again.
    asked = {"reason", "confirmed", "csrfmiddlewaretoken", "done_so_far"}
    if preview["signal_steps"]:
        asked.add("reuse_signals")
    context["carry"] = [
        (name, value) for name, values in form.data.lists() if name not in asked for value in values
    ]
    if form.cleaned_data["status"] == RETRYING:
        context["retrying"] = list(retrying_runs(plan.selection.runs())[:RETRYING_SHOWN])
    return context


def question(action: str, count: int, from_step: str) -> str:
    runs = f"{count} run{'s' if count != 1 else ''}"
    if action == "retry":
        return f"Retry {runs} from step {from_step}? That step and every later one run again."
    return f"{ACTIONS[action][0].capitalize()} {runs}?"


def button(action: str, count: int, from_step: str) -> str:
    runs = f"{count} run{'s' if count != 1 else ''}"
    return {
        "retry": f"Retry {runs} from {from_step}…",
        "retry_now": f"Retry {runs} now…",
        "resume": f"Resume {runs}…",
        "cancel": f"Cancel {runs}…",
    }[action]


def act(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = RecoverForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(errors))
        return render(request, "runs/recover.html", {"form": form}, status=422)
    try:
        plan = form.plan()
    except BulkError as exc:
        messages.error(request, str(exc))
        return render(request, "runs/recover.html", {"form": form}, status=422)
    if request.POST.get("confirmed") != "yes":
        # Without JavaScript the dialog never opened: ask here.
        return render(request, "runs/recover.html", page_context(request, form, confirming=True))
    batch = plan.apply_batch(by=request.user, reason=form.cleaned_data["reason"])
    so_far = int(request.POST.get("done_so_far") or 0) + len(batch.done)
    for refusal in batch.refused[:5]:
        messages.warning(request, refusal)
    context = {
        "form": form,
        "batch": batch,
        "so_far": so_far,
        "past": ACTIONS[plan.action][1],
        "carry": [(n, v) for n, v in hidden_fields(request) if n != "done_so_far"],
        # Another batch follows only while the last one acted: a run refused again and
        # again must not keep the page posting.
        "more": batch.remaining > 0 and bool(batch.done),
    }
    if request.htmx:
        return render(request, "runs/recover.html#progress", context)
    return render(request, "runs/recover.html", context)
