"""Operator actions on one run: resume, cancel, terminate, retry from a step, signal, edit.

Each is a POST that asks for a confirmation and a reason first, then calls the Run method
that does it (state machine, audit entry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import reswap, retarget

from runs.forms import EditOutputForm, ReasonForm
from runs.models import InvalidOperation, Run
from runs.views.common import AuthenticatedHttpRequest, get_run, hidden_fields, login_required, see_other
from runs.views.run_page import checkpoint_context, detail_context, signal_form_for


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


def with_code_warning(run, question: str) -> str:
    warning = run.code_warning()
    return f"{question} {warning}" if warning else question


@require_POST
@login_required
def checkpoint_edit_and_continue(
    request: AuthenticatedHttpRequest, run_id: int, position: int
) -> HttpResponse:
    run = get_run(request, run_id, operate=True)
    checkpoint = run.checkpoints.live().filter(position=position).first()
    if checkpoint is None:
        messages.error(request, f"Run {run.pk} has no live checkpoint at position {position}.")
        return after_action(request, run, status=409)
    form = EditOutputForm(request.POST)

    def edit(data) -> str:
        run.edit_and_continue(position, data["output"], by=request.user, reason=data["reason"])
        return (
            f"Step {position} output replaced (the old one is kept, superseded); run {run.pk} continues "
            f"from step {position + 1}, every later step runs again."
        )

    def invalid(form) -> HttpResponse:
        context = {**checkpoint_context(request, run, checkpoint, form), "inline": bool(request.htmx)}
        if request.htmx:
            response = render(request, "runs/checkpoint.html#edit-form", context, status=422)
            return reswap(retarget(response, f"#edit-form-{checkpoint.pk}"), "outerHTML")
        return render(request, "runs/checkpoint.html", context, status=422)

    question = with_code_warning(
        run,
        f"Replace the output of step {position} ({checkpoint.name}) of run {run.pk} and run every "
        "step after it again?",
    )
    return perform(request, run, form, question, edit, invalid)


@require_POST
@login_required
def run_retry_now(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run(request, run_id, operate=True)

    def retry_now(data) -> str:
        run.retry_now(by=request.user, reason=data["reason"])
        return f"Run {run.pk} retries its step now."

    question = with_code_warning(run, f"Retry the step of run {run.pk} now, without waiting for its backoff?")
    return perform(request, run, ReasonForm(request.POST), question, retry_now)
