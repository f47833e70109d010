"""Token authentication that slows down guessing.

Wrong tokens from one address are counted for a minute; past DURABLE_TOKEN_FAILURE_LIMIT
every token request from there is answered 429 until the minute is over. The counts live
in the default cache (shared by all web processes when DURABLE_CACHE_URL is set).
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

WINDOW = 60  # seconds


class ThrottledTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        key = f"api-token-failures:{request.META.get('REMOTE_ADDR', '')}"
        if cache.get(key, 0) >= settings.DURABLE_TOKEN_FAILURE_LIMIT:
            raise exceptions.Throttled(wait=WINDOW, detail="Too many wrong tokens from this address.")
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            if not cache.add(key, 1, WINDOW):
                try:
                    cache.incr(key)
                except ValueError:  # expired between the two calls
                    cache.set(key, 1, WINDOW)
            raise
