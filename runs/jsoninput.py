"""JSON from people and clients, checked before it is stored, and shown back safely.

Every door that takes JSON text (the dashboard's and the admin's forms, the API, the
`runs` command) parses it with `parse`: text over DURABLE_JSON_MAX_BYTES, nesting
deeper than DURABLE_JSON_MAX_DEPTH, NaN and Infinity, and strings no database column
can hold are refused with a JSONInputError (a ValueError) naming the limit, before any
row is touched. Nesting is measured on the text before it is decoded, so no input can
make the decoder recurse. Values handed over by code are checked where they are stored:
runs.models.ensure_json measures the text it encodes with `text_depth`.

Showing stored JSON never fails: `render` formats a value, and falls back to compact
text written by an encoder without recursion (`flat`) when the standard one gives up,
e.g. on a row written before these limits existed.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import threading
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from django.conf import settings

# A JSON string, with its escapes: what sits between its quotes is not structure.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# `flat` gives up beyond this depth: only a value that contains itself gets there.
FLAT_MAX_DEPTH = 100_000


class JSONInputError(ValueError):
    """JSON that cannot be accepted; the message says why, naming the limit."""


def max_bytes() -> int:
    return settings.DURABLE_JSON_MAX_BYTES


def max_depth() -> int:
    return settings.DURABLE_JSON_MAX_DEPTH


def too_deep_message(what: str = "JSON") -> str:
    return f"{what} is nested deeper than {max_depth()} levels, the most accepted."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")  # databases refuse NaN and Infinity


def parse(text: str | bytes, what: str = "JSON", *, check: bool = True) -> Any:
    """Parse strict JSON text within the size and depth limits, or raise JSONInputError.

    With check=False the values inside are not checked (`check_value`): the API checks
    them field by field, to name the field at fault.
    """
    if isinstance(text, bytes):
        size = len(text)
    else:
        # A character is at least one byte: only text that might fit is encoded to count.
        size = len(text) if len(text) > max_bytes() else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes():
        raise JSONInputError(f"{what} is longer than {max_bytes():,} bytes, the most accepted.")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"{what} is not UTF-8 text: {exc}.") from None
    if text_depth(text) > max_depth():
        raise JSONInputError(too_deep_message(what))
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise JSONInputError(f"This is not valid JSON: {exc}.") from None
    except RecursionError:  # unreachable after text_depth; kept so that no input becomes a 500
        raise JSONInputError(too_deep_message(what)) from None
    if check:
        check_value(value, what)
    return value


def text_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON text nest (0 for a scalar), without decoding it."""
    if text.count("[") + text.count("{") <= max_depth():
        return 0  # cannot nest deeper than the limit: not worth measuring
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(1 if char in "[{" else -1 for char in brackets), default=0)


def check_value(value: Any, what: str = "JSON") -> None:
    """Refuse a value no JSON column should hold: too deep, non-finite numbers, NUL
    characters or lone surrogates in its strings. Iterative: any depth is safe to check."""
    limit = max_depth()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, what)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JSONInputError(f"{what} holds a number that is not finite ({item}).")
        elif isinstance(item, dict | list | tuple):
            if depth >= limit:
                raise JSONInputError(too_deep_message(what))
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        check_text(key, what)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def check_text(text: str, what: str = "text") -> None:
    if "\x00" in text:
        raise JSONInputError(f"{what} contains a NUL character (\\u0000), which the database cannot store.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONInputError(f"{what} contains a lone surrogate, which is not valid Unicode.") from None


# --- showing stored JSON ------------------------------------------------------------


def render(value: Any, *, cap: int | None = None, **options) -> tuple[str, bool]:
    """(text, formatted): json.dumps(value, ensure_ascii=False, **options), or, when that
    fails (too deep for the standard encoder, or anything else), compact text cut after
    `cap` characters, with formatted False."""
    try:
        return json.dumps(value, ensure_ascii=False, **options), True
    except (RecursionError, ValueError, TypeError):
        pass
    default = options.get("default")
    try:
        return flat(value, cap=cap, default=default), False
    except Exception:
        return reprlib.repr(value)[: cap or None], False


def pretty(value: Any, cap: int | None = None, **options) -> str:
    """Indented JSON text of a stored value; raw compact text if it cannot be formatted."""
    return render(value, cap=cap, indent=2, **options)[0]


def compact(value: Any, cap: int | None = None, **options) -> str:
    """One line of JSON text of a stored value (raw if it cannot be formatted), cut at `cap`."""
    text = render(value, cap=cap, **options)[0]
    return text if cap is None else text[:cap]


def excerpt(text: str, limit: int = 80) -> str:
    """The start of some input, quoted, for an error message that should not repeat a megabyte."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def flat(value: Any, cap: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """Compact JSON text of `value` written without recursion, so any depth works; cut
    after `cap` characters. Unknown types go through `default`, as with json.dumps."""
    parts: list[str] = []
    size = 0
    stack: list[list] = []  # [iterator, closing bracket, is an object, next item is the first]
    item, pending = value, True
    while cap is None or size <= cap:
        if len(stack) > FLAT_MAX_DEPTH:
            raise ValueError("nested too deeply to show (circular?)")
        if pending:
            if isinstance(item, dict):
                text = "{"
                stack.append([iter(item.items()), "}", True, True])
            elif isinstance(item, list | tuple):
                text = "["
                stack.append([iter(item), "]", False, True])
            else:
                text = json.dumps(item, ensure_ascii=False, default=default)
            parts.append(text)
            size += len(text)
            pending = False
        if not stack:
            break
        frame = stack[-1]
        try:
            item = next(frame[0])
        except StopIteration:
            parts.append(frame[1])
            size += 1
            stack.pop()
            continue
        if not frame[3]:
            parts.append(",")
            size += 1
        frame[3] = False
        if frame[2]:
            key, item = item
            text = json.dumps(key if isinstance(key, str) else json.dumps(key), ensure_ascii=False) + ":"
            parts.append(text)
            size += len(text)
        pending = True
    text = "".join(parts)
    return text if cap is None else text[:cap]


class StoredJSONDecoder(json.JSONDecoder):
    """Reads stored JSON however deep the reader's own stack already is.

    Python's decoder recurses once per nesting level and counts against the interpreter's
    recursion limit, so a value nested several hundred levels deep (a row stored before the
    depth limit) fails to load deep inside a page's rendering. Such a value is decoded again
    in a fresh thread, whose stack starts empty; if even that fails, the stored text itself
    is returned, so showing a row never fails."""

    def decode(self, s, *args, **kwargs):
        try:
            return super().decode(s, *args, **kwargs)
        except RecursionError:
            pass
        outcome: dict[str, Any] = {"value": s}

        def decode_afresh():
            try:
                outcome["value"] = json.JSONDecoder.decode(self, s)
            except RecursionError:
                pass  # deeper than any stack: keep the text

        thread = threading.Thread(target=decode_afresh, name="json-decode")
        thread.start()
        thread.join()
        return outcome["value"]
