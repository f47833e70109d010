"""The deploy check page: the last `runs check` (in-flight runs replayed against new code).

Read and render only; the check itself runs from the command line, where the code to
be deployed is checked out (runs.replaycheck).
"""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs.models import ReplayCheck
from runs.views.common import AuthenticatedHttpRequest, check_viewer, login_required

EARLIER_SHOWN = 10  # earlier checks listed under the last one


@require_GET
@login_required
def deploy_check(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    checks = list(ReplayCheck.objects.all()[: EARLIER_SHOWN + 1])
    last = checks[0] if checks else None
    return render(
        request,
        "runs/deploy_check.html",
        {"last": last, "rows": last.workflow_rows() if last else [], "earlier": checks[1:]},
    )
