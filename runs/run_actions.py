"""Run-page recovery actions added beside runs.views: edit a step and continue from it,
and cut a retry backoff short.

Like every dashboard action they validate, confirm, then call one Run method (which
checks the state, writes the audit entry and rings the doorbell); a state that does
not allow it comes back as a message.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST
from django_htmx.http import reswap, retarget

from runs.forms import EditOutputForm, ReasonForm
from runs.views import (
    AuthenticatedHttpRequest,
    after_action,
    checkpoint_context,
    get_run,
    login_required,
    perform,
)


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
