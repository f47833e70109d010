"""Template filters for what a run recorded about the code it ran: step calls and versions."""

from __future__ import annotations

from typing import Any

from django import template

from runs import stepinputs

register = template.Library()


@register.filter
def step_call(recorded: Any, limit: int = 300) -> str:
    """A checkpoint's recorded input as `(1, "a", limit=5)` (runs.stepinputs.shown)."""
    return stepinputs.shown(recorded, limit)
