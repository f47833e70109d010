"""Secrets out of what is stored about failures and model calls.

A provider's error may echo the request, API key included, and any exception may
carry a token; what is stored is shown on the run page, in the API and in exports.
`redact` replaces with [redacted]:

- the value of every configured secret: OPENAI_API_KEY, ANTHROPIC_API_KEY, SECRET_KEY,
  DURABLE_METRICS_TOKEN and each value of DURABLE_REDACT_VALUES (values shorter than
  MIN_SECRET characters are left alone: they would shred ordinary text);
- API keys by their look: `sk-…` (OpenAI), `sk-ant-…` (Anthropic);
- `Bearer …` tokens, and the values of `Authorization:` and `x-api-key:` headers.

runs.engine.describe applies it to every failed attempt, step and run; agentkit.llm to
what a model call leaves on its checkpoint, agentkit.models.ProviderCall to its rows.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

REDACTED = "[redacted]"
SECRET_SETTINGS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "SECRET_KEY", "DURABLE_METRICS_TOKEN")
MIN_SECRET = 8

PATTERNS = [
    # OpenAI (sk-…, sk-proj-…) and Anthropic (sk-ant-api03-…) keys.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    # Authorization and API-key headers, as text, repr'd dicts or JSON: the whole value.
    (
        re.compile(r"""(?i)(\b(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)[^'"\r\n,}]+"""),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"""(?i)(\bx-api-key['"]?\s*[:=]\s*['"]?)[^'"\s,}]+"""), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1{REDACTED}"),
]


def secret_values() -> list[str]:
    values = [getattr(settings, name, "") or "" for name in SECRET_SETTINGS]
    values += list(getattr(settings, "DURABLE_REDACT_VALUES", []))
    # Longest first, so that a secret containing another is replaced whole.
    return sorted({v for v in values if len(v) >= MIN_SECRET}, key=len, reverse=True)


def redact(text: str) -> str:
    """The text with every secret it contains replaced by [redacted]."""
    if not text:
        return text
    for value in secret_values():
        text = text.replace(value, REDACTED)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any, _depth: int = 0) -> Any:
    """A JSON-like value with every string in it (keys too) passed through `redact`.
    Nesting deeper than any storable value (runs.jsoninput) is replaced whole."""
    if _depth > 200:
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(key, _depth + 1): redact_value(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item, _depth + 1) for item in value]
    return value
