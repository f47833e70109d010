"""Retry decisions for steps: how many attempts, how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class NonRetryableError(Exception):
    """Raise from a step to fail it for good without spending its remaining attempts."""


class StepTimeout(Exception):
    """A step ran longer than its timeout; counts as a failed attempt."""


class StepOutputError(NonRetryableError):
    """A step returned something that cannot be stored as JSON."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failing step is attempted again.

    The delay before attempt n+1 is ``initial_interval * backoff_coefficient ** (n-1)``,
    capped at ``max_interval`` and spread by +/- ``jitter`` (a fraction) so that many
    runs failing together do not retry in lockstep.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("retry intervals cannot be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, NonRetryableError):
            return False
        return not isinstance(exc, self.non_retryable)

    def should_retry(self, attempts_made: int, exc: BaseException) -> bool:
        return attempts_made < self.max_attempts and self.is_retryable(exc)

    def delay(self, attempts_made: int) -> float:
        """Seconds to wait after the given number of failed attempts."""
        base = self.initial_interval * self.backoff_coefficient ** max(attempts_made - 1, 0)
        base = min(base, self.max_interval)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)


DEFAULT_RETRY_POLICY = RetryPolicy()
