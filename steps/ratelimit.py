"""Shared rate limits: at most N calls per period for every step that names the key,
across all workers, enforced in the database as a sliding-window log of grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from runs.flow import lock
from steps.models import RateLimitGrant

# Grants older than this are deleted by the sweep; longer periods are not supported.
LONGEST_PERIOD = timedelta(days=1)


@dataclass(frozen=True)
class RateLimit:
    key: str  # shared by every step that calls the same provider, e.g. "openai:gpt-4o"
    calls: int = 1
    period: float = 1.0  # seconds

    def __post_init__(self) -> None:
        if self.calls < 1 or self.period <= 0:
            raise ValueError("a rate limit needs at least one call per positive period")
        if self.period > LONGEST_PERIOD.total_seconds():
            raise ValueError("rate limit periods longer than a day are not supported")

    def effective(self) -> RateLimit:
        """This limit, as overridden by the DURABLE_RATE_LIMITS setting."""
        override = settings.DURABLE_RATE_LIMITS.get(self.key)
        return RateLimit(self.key, *override) if override else self

    def acquire(self) -> datetime | None:
        """Take a call if the window has room; else return when to try again."""
        limit = self.effective()
        with lock(f"rate:{limit.key}"):
            now = timezone.now()
            window = RateLimitGrant.objects.filter(
                key=limit.key, granted_at__gt=now - timedelta(seconds=limit.period)
            ).order_by("granted_at")
            oldest = list(window.values_list("granted_at", flat=True)[: limit.calls])
            if len(oldest) < limit.calls:
                RateLimitGrant.objects.create(key=limit.key, granted_at=now)
                return None
            # The window frees a place when its oldest grant ages out.
            return oldest[0] + timedelta(seconds=limit.period)


def forget_old_grants() -> int:
    return RateLimitGrant.objects.filter(granted_at__lt=timezone.now() - LONGEST_PERIOD).delete()[0]
