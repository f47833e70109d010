"""Template pieces for LLM steps and model costs: `{% load llm %}`.

{% llm_step checkpoint [read] %} tokens, cost, latency and the conversation of an LLM step
                                 (renders nothing for other steps)
{% llm_usage run.llm_usage %}    a run's token and cost totals (see accounting.attach_totals)
{{ value|usd }}  {{ value|tokens }}
"""

from __future__ import annotations

from django import template

from agentkit import accounting, history

register = template.Library()


@register.inclusion_tag("agents/llm_step.html")
def llm_step(checkpoint, read=None) -> dict:
    """`read`: the run's checkpoints the page already has (a short run's page), in which a
    call's earlier messages are found; without it they are queried, only if needed."""
    earlier = history.earlier_among(read, checkpoint) if read else history.earlier_than(checkpoint)
    return {"llm": accounting.llm_step(getattr(checkpoint, "meta", None), earlier)}


@register.inclusion_tag("agents/usage.html")
def llm_usage(usage) -> dict:
    return {"usage": usage}


@register.filter
def usd(value) -> str:
    """Dollars for costs that are often fractions of a cent: $0.0042, $1.25; "-" when unknown."""
    if value is None or value == "":
        return "-"
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return "-"
    if amount == 0:
        return "$0.00"
    if abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


@register.filter
def tokens(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "-"
