"""The notifications page: rules, their recent deliveries (each a durable run), and the
test-delivery button (POST, `runs.operate`, audited by Rule.send_test)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from notifications.models import Delivery, Rule
from runs.forms import ReasonForm
from runs.views.common import AuthenticatedHttpRequest, check_operator, check_viewer, login_required

DELIVERIES_SHOWN = 100


@require_GET
@login_required
def notification_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    context = {
        "rules": Rule.objects.all(),
        "deliveries": Delivery.objects.select_related("rule", "run", "delivery_run")[:DELIVERIES_SHOWN],
        "can_operate": request.user.has_perm("runs.operate"),
    }
    return render(request, "notifications/list.html", context)


@require_POST
@login_required
def notification_test(request: AuthenticatedHttpRequest, rule_id: int) -> HttpResponse:
    check_operator(request.user)
    rule = get_object_or_404(Rule, pk=rule_id)
    form = ReasonForm(request.POST)
    if form.is_valid():
        delivery = rule.send_test(by=request.user, reason=form.cleaned_data["reason"])
        messages.success(request, f"Test delivery for {rule.name} started as run {delivery.delivery_run_id}.")
    else:
        messages.error(request, "The reason is too long.")
    return redirect("notification_list")
