"""Durations as operators type them: 90s, 15m, 12h, 30d, 2w, or combined like 1d12h.

No Django here: settings parse DURABLE_PRUNE_* with it before apps load.
"""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+)([smhdw])")
# Beyond this a datetime arithmetic overflows; no retention needs it.
MAX_SECONDS = 100 * 365 * 86_400


def parse_duration(text: str) -> timedelta:
    """Parse "30d", "12h", "1d12h"...; raise ValueError naming the accepted forms."""
    compact = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: write it like 90s, 15m, 12h, 30d, 2w or 1d12h")
    seconds = sum(int(number) * UNITS[unit] for number, unit in parts)
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)
