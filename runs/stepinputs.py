"""What a step was called with, as recorded on its checkpoint, and how a call differs from it.

`record(args, kwargs)` is what the engine stores in `Checkpoint.input`:

    {"args": [...], "kwargs": {...}, "sha256": "..."}          the call, as JSON
    {"sha256": "...", "bytes": 81234, "omitted": "why"}         too large to keep
    {"omitted": "why"}                                          not JSON: nothing to compare

The arguments go through the same rules as a step's output (runs.models.ensure_json) and
are capped at DURABLE_STEP_INPUT_BYTES; the digest is taken over the canonical JSON text
*before* redaction, so a pre-deploy check can still tell whether a call changed when the
stored copy had secrets replaced by [redacted]. `differences(recorded, args, kwargs)`
answers that check in words.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings

from runs.models import ensure_json
from runs.redaction import redact_value

MAX_SHOWN = 80  # characters of a value quoted in a difference


def canonical(args: Any, kwargs: Any) -> str:
    return json.dumps(
        {"args": args, "kwargs": kwargs},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def record(args: tuple | list, kwargs: dict) -> dict[str, Any]:
    """The input to store on a step's checkpoint (never raises for odd arguments)."""
    try:
        value = ensure_json({"args": list(args), "kwargs": kwargs}, "the step's arguments")
    except ValueError as exc:
        return {"omitted": str(exc)[:300]}
    text = canonical(value["args"], value["kwargs"])
    size = len(text.encode("utf-8"))
    sha = digest(text)
    if size > settings.DURABLE_STEP_INPUT_BYTES:
        return {
            "sha256": sha,
            "bytes": size,
            "omitted": f"larger than {settings.DURABLE_STEP_INPUT_BYTES} bytes",
        }
    return {"args": redact_value(value["args"]), "kwargs": redact_value(value["kwargs"]), "sha256": sha}


def differences(recorded: Any, args: tuple | list, kwargs: dict) -> list[str]:
    """How a call with (args, kwargs) differs from the recorded input; [] when it does not,
    or when nothing comparable was recorded (older checkpoints, non-JSON arguments)."""
    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        return []
    try:
        text = canonical(list(args), kwargs)
    except (TypeError, ValueError, RecursionError):
        return ["the arguments are no longer JSON-serialisable"]
    if digest(text) == recorded["sha256"]:
        return []
    if "args" not in recorded:
        return [f"the arguments changed (recorded {recorded.get('bytes', '?')} bytes, not kept)"]
    # Compared and shown as stored: redacted, so a difference never quotes a secret.
    return _itemised(recorded["args"], recorded.get("kwargs") or {}, redact_value(json.loads(text))) or [
        "the arguments changed (in a part stored redacted)"
    ]


def _itemised(old_args: list, old_kwargs: dict, new: dict) -> list[str]:
    found = []
    new_args, new_kwargs = new["args"], new["kwargs"]
    for index in range(max(len(old_args), len(new_args))):
        old = old_args[index] if index < len(old_args) else _MISSING
        now = new_args[index] if index < len(new_args) else _MISSING
        if old != now:
            found.append(f"argument {index}: {_shown(old)} -> {_shown(now)}")
    for key in sorted(set(old_kwargs) | set(new_kwargs)):
        old, now = old_kwargs.get(key, _MISSING), new_kwargs.get(key, _MISSING)
        if old != now:
            found.append(f"{key}=: {_shown(old)} -> {_shown(now)}")
    return found


class _Missing:
    def __repr__(self) -> str:
        return "(none)"


_MISSING = _Missing()


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def shown(recorded: Any, limit: int = 300) -> str:
    """The recorded call as one line, `(1, "a", limit=5)`, cut to `limit` characters; never fails."""
    if not isinstance(recorded, dict):
        return ""
    if "args" not in recorded:
        return f"(not kept: {recorded.get('omitted') or 'unknown'})"
    args, kwargs = recorded.get("args"), recorded.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "(unreadable)"
    try:
        parts = [json.dumps(arg, ensure_ascii=False) for arg in args]
        parts += [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in kwargs.items()]
    except (TypeError, ValueError, RecursionError):
        return "(unreadable)"
    text = f"({', '.join(parts)})"
    return text if len(text) <= limit else text[: limit - 1] + "…"
