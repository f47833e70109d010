"""What every dashboard view shares: who may look or act, the authenticated request, and
small response helpers.

Views read and render. Every change to a run goes through one of Run's operator
methods, which enforce the state machine and write the audit entry; a request the
run's state does not allow comes back as InvalidOperation and is shown to the
operator as a message.

One template serves a page and its fragments: htmx requests that target a fragment
get `template.html#fragment`, everything else gets the whole page, so every page
also works without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required as django_login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from runs.models import Run


class AuthenticatedHttpRequest(HttpRequest):
    user: User
    htmx: HtmxDetails


def can_view(user) -> bool:
    return user.has_perm("runs.view_run") or user.has_perm("runs.operate")


# What the 403 page says is missing (templates/403.html shows the exception's message).
VIEW_NEEDED = "Looking at runs needs the “runs.view_run” permission (Can view run), or “runs.operate”."


OPERATE_NEEDED = "This needs the “runs.operate” permission (Can resume, retry, cancel, signal and edit runs)."


def check_viewer(user) -> None:
    if not can_view(user):
        raise PermissionDenied(VIEW_NEEDED)


def check_operator(user) -> None:
    if not user.has_perm("runs.operate"):
        raise PermissionDenied(OPERATE_NEEDED)


def get_run(request: AuthenticatedHttpRequest, run_id: int, *, operate: bool = False) -> Run:
    # Permission first, so that users without access cannot probe which runs exist.
    if operate:
        check_operator(request.user)
    else:
        check_viewer(request.user)
    return get_object_or_404(Run, pk=run_id)


def login_required(view):
    """Django's login_required, except that an htmx request (a poll, an action) whose
    session has expired sends the whole page to the login form, not a fragment."""
    guarded = django_login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.htmx and not request.user.is_authenticated:
            back = request.htmx.current_url_abs_path or request.get_full_path()
            return HttpResponseClientRedirect(redirect_to_login(back).url)
        return guarded(request, *args, **kwargs)

    return wrapper


def wants_fragment(request: AuthenticatedHttpRequest, target: str) -> bool:
    return request.htmx.target == target and not request.htmx.history_restore_request


def see_other(url: str) -> HttpResponse:
    response = redirect(url)
    response.status_code = 303
    return response


def url_filler(name: str, *args: int) -> Callable[[int], str]:
    """reverse(name, args=[*args, n]) for many n: reversed once, then filled in."""
    marker = 4_611_686_018_427_387_904  # 2**62: no run id or position looks like it
    head, _, tail = reverse(name, args=[*args, marker]).rpartition(str(marker))
    return lambda number: f"{head}{number}{tail}"


def hidden_fields(request) -> list[tuple[str, str]]:
    """The posted fields to carry through a confirmation, except those it asks again."""
    return [
        (name, value)
        for name, values in request.POST.lists()
        if name not in ("csrfmiddlewaretoken", "confirmed", "reason")
        for value in values
    ]
