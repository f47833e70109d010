"""Start a run from the dashboard: the same start as the API's and the CLI's
(Run.objects.start_or_get, which writes the audit entry), for operators only.

The input is parsed by runs.jsoninput (size and depth limits), then checked against
the JSON schema the workflow declares, if any. A refused form comes back with what was
typed and every problem named; nothing is started.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse

from runs.forms import StartRunForm, input_schema, pretty
from runs.models import Run, UnknownQueue
from runs.views.common import AuthenticatedHttpRequest, check_operator, login_required, see_other
from runs.workflow import UnknownWorkflow, registry


def start_form(data=None, initial=None) -> StartRunForm:
    return StartRunForm(
        data, initial=initial, workflows=registry.names(), queues=list(settings.DURABLE_QUEUES)
    )


def form_page(request: AuthenticatedHttpRequest, form: StartRunForm, status: int = 200) -> HttpResponse:
    schemas = {name: pretty(schema) for name in registry.names() if (schema := input_schema(name))}
    return render(request, "runs/start.html", {"form": form, "schemas": schemas}, status=status)


@login_required
def start_run(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_operator(request.user)
    if request.method == "GET":
        return form_page(
            request, start_form(initial={"input": "{}", "workflow": request.GET.get("workflow")})
        )
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    form = start_form(request.POST)
    if not form.is_valid():
        return form_page(request, form, status=422)
    data = form.cleaned_data
    try:
        run, created = Run.objects.start_or_get(
            data["workflow"],
            data["input"],
            queue=data["queue"],
            by=request.user,
            dedupe_key=data["idempotency_key"],
        )
    except (UnknownQueue, UnknownWorkflow, ValueError) as exc:
        form.add_error(None, str(exc))
        return form_page(request, form, status=422)
    if created:
        messages.success(request, f"Run {run.pk} ({run.workflow}) started.")
    else:
        messages.info(request, f"This idempotency key started run {run.pk} before: nothing new was started.")
    return see_other(reverse("run_detail", args=[run.pk]))
