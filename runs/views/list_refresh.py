"""The run list's live refresh: its counts, rows and pager, re-sent when any run changed.

The list page polls this view with the stamp it was drawn at (Run.objects.last_change).
While no run has changed, the answer is 204 after that one query, the same cost at any
table size. Once something changed, the answer is the list itself, drawn by the list's
own code, as out-of-band swaps of the counts, the rows and the pager: the filter form
and the operator's ticked boxes stay as they are.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs.forms import RunFilterForm
from runs.models import Run
from runs.views.common import AuthenticatedHttpRequest, check_viewer, login_required
from runs.views.run_list import list_context, parse_ids


@require_GET
@login_required
def run_rows(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The list's counts, rows and pager once a run changed; 204 while none did."""
    check_viewer(request.user)
    if request.GET.get("v") == Run.objects.last_change():
        return HttpResponse(status=204)
    context = list_context(RunFilterForm(request.GET))
    context["selected"] = set(parse_ids(request.GET.getlist("run")))
    return render(request, "runs/list.html#live-rows", context)
