"""Schedule pages: the list, one schedule with its past ticks and next fire times, and the
pause / resume / trigger-now actions (POST, `runs.operate`, audited by Schedule's methods)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from runs.forms import ReasonForm
from runs.models import InvalidOperation
from runs.views.common import AuthenticatedHttpRequest, check_operator, check_viewer, login_required
from schedules.models import Schedule

TICKS_SHOWN = 100


@require_GET
@login_required
def schedule_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    return render(request, "schedules/list.html", {"schedules": Schedule.objects.all()})


@require_GET
@login_required
def schedule_detail(request: AuthenticatedHttpRequest, schedule_id: int) -> HttpResponse:
    check_viewer(request.user)
    schedule = get_object_or_404(Schedule, pk=schedule_id)
    ticks = schedule.fired_ticks.select_related("run")[:TICKS_SHOWN]
    context = {
        "schedule": schedule,
        "ticks": ticks,
        "next_times": schedule.next_fire_times(5) if schedule.enabled else [],
        "can_operate": request.user.has_perm("runs.operate"),
    }
    return render(request, "schedules/detail.html", context)


def _act(request: AuthenticatedHttpRequest, schedule_id: int, action) -> HttpResponse:
    check_operator(request.user)
    schedule = get_object_or_404(Schedule, pk=schedule_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The reason is too long.")
    else:
        try:
            messages.success(request, action(schedule, form.cleaned_data["reason"]))
        except InvalidOperation as exc:
            messages.error(request, str(exc))
    return redirect("schedule_detail", schedule.pk)


@require_POST
@login_required
def schedule_pause(request: AuthenticatedHttpRequest, schedule_id: int) -> HttpResponse:
    def pause(schedule: Schedule, reason: str) -> str:
        schedule.pause(by=request.user, reason=reason)
        return f"Schedule {schedule.name} paused."

    return _act(request, schedule_id, pause)


@require_POST
@login_required
def schedule_resume(request: AuthenticatedHttpRequest, schedule_id: int) -> HttpResponse:
    def resume(schedule: Schedule, reason: str) -> str:
        schedule.resume(by=request.user, reason=reason)
        return f"Schedule {schedule.name} resumed; ticks missed while paused are not fired."

    return _act(request, schedule_id, resume)


@require_POST
@login_required
def schedule_trigger(request: AuthenticatedHttpRequest, schedule_id: int) -> HttpResponse:
    def trigger(schedule: Schedule, reason: str) -> str:
        tick = schedule.trigger_now(by=request.user, reason=reason)
        if tick.run_id:
            return f"Schedule {schedule.name} triggered: run {tick.run_id} started."
        return f"Schedule {schedule.name} triggered: {tick.outcome} ({tick.reason})."

    return _act(request, schedule_id, trigger)
