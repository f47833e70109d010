"""The viewer's time zone: every time on the dashboard is shown in it.

static/timezone.js puts the browser's zone (Intl's IANA name) in the `tz` cookie; this
middleware activates it for the request, so the `local_time` filter renders in it. A
missing or unknown zone name leaves the default (settings.TIME_ZONE, UTC) in force.
The API is left in the default: what a client reads must not depend on a browser cookie.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

COOKIE = "tz"
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
        zone = None if request.path.startswith(API_PREFIX) else zone_named(request.COOKIES.get(COOKIE, ""))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()  # a thread serves the next request in the default zone
