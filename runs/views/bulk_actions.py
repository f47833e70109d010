"""The run list's bulk actions on the ticked runs: resume, cancel, retry from a named step."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseLocation

from runs.bulk import BulkPlan, Selection, code_warnings
from runs.forms import BULK_ACTIONS, BULK_LIMIT, BulkForm, RunFilterForm
from runs.models import InvalidOperation, Run, Status
from runs.views.actions import confirm_page
from runs.views.common import (
    AuthenticatedHttpRequest,
    check_operator,
    check_viewer,
    hidden_fields,
    login_required,
    see_other,
    wants_fragment,
)
from runs.views.run_list import LIST_DEFERRED, PAGE_SIZE, parse_ids


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
        "code_warnings": code_warnings(form.eligible(targets)),
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
