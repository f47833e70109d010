"""The viewer's time zone: every time on the dashboard is shown in it.

A person may choose a zone (ViewerPreference, kept in the session from sign-in on, so no
request pays a query for it); otherwise static/timezone.js puts the browser's zone
(Intl's IANA name) in the `tz` cookie. This middleware activates the zone for the
request, so the `local_time` filter renders in it. A missing or unknown zone name leaves
the default (settings.TIME_ZONE, UTC) in force.
The API is left in the default: what a client reads must not depend on a browser cookie.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

COOKIE = "tz"
SESSION_KEY = "time_zone"  # the zone the person chose, copied from ViewerPreference
API_PREFIX = "/api/"
# IANA names are short ("America/Argentina/ComodRivadavia" is among the longest).
LONGEST_NAME = 64


@lru_cache(maxsize=64)
def zone_named(name: str) -> ZoneInfo | None:
    """The zone of an IANA name, or None for anything zoneinfo does not know."""
    if not name or len(name) > LONGEST_NAME or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


class ViewerTimeZoneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        zone = None if request.path.startswith(API_PREFIX) else zone_named(self.chosen(request))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()  # a thread serves the next request in the default zone

    @staticmethod
    def chosen(request: HttpRequest) -> str:
        session = getattr(request, "session", None)
        return (session.get(SESSION_KEY, "") if session is not None else "") or request.COOKIES.get(
            COOKIE, ""
        )


def remember_choice(request: HttpRequest, zone: str) -> None:
    """Keep a person's chosen zone ("" for the browser's) in their session."""
    if zone:
        request.session[SESSION_KEY] = zone
    else:
        request.session.pop(SESSION_KEY, None)


def restore_choice(sender, request: HttpRequest | None, user, **kwargs) -> None:
    """On sign-in, the zone the person chose (a signal receiver: one query per sign-in)."""
    from runs.models import ViewerPreference

    if request is not None and hasattr(request, "session"):
        remember_choice(request, ViewerPreference.time_zone_of(user))
