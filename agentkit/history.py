"""Linear storage of conversations: each model call keeps only what is new in it.

An agent loop sends the model the whole conversation at every call. Keeping all of it
on every call's checkpoint (its input and its meta) stores O(n²) bytes over n calls.
Instead, `llm.chat` compares the conversation with the ones this run sent before and
records a reference to the longest earlier one it extends, plus the new messages:

    {"history": {"position": 12, "messages": 25}, "messages": [<the new ones>], ...}

reads "the 25 messages the model call at position 12 was sent (its whole conversation,
rebuilt the same way), then these". The first call of a conversation, and one that does
not extend an earlier call (a summarised or cut conversation), keeps all its messages.

Replay needs nothing from this: workflow code rebuilds its conversation from the
recorded replies and tool results, as it built it the first time, and the same
comparison gives the same reference. Only a reader of a checkpoint (the run page)
rebuilds a call's conversation from the chain of references, with `rebuild`, newest
messages first and no further back than it will show. Checkpoints recorded before
this change hold their whole conversation and end a chain.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from django.db.models import Q

# Earlier conversations of a run compared with each new call: an agent loop extends its
# last one; a workflow interleaving a few conversations (a loop and a judge) finds its own.
REMEMBERED = 8

# The conversations each run context sent so far: (position, messages as sent), newest last.
# Kept beside the context rather than on it, and gone with it.
_sent: weakref.WeakKeyDictionary[Any, list[tuple[int, list[dict]]]] = weakref.WeakKeyDictionary()


class Reference(TypedDict):
    """The first `messages` messages are those the model call at `position` was sent."""

    position: int
    messages: int


def continuation(ctx, messages: Sequence[dict]) -> tuple[Reference | None, list[dict]]:
    """The earlier call of this run that `messages` extends, if any, and what is new."""
    best: tuple[int, int] | None = None
    for position, earlier in _sent.get(ctx, ()):
        size = len(earlier)
        if (
            0 < size <= len(messages)
            and (best is None or size > best[1])
            and list(messages[:size]) == earlier
        ):
            best = (position, size)
    if best is None:
        return None, list(messages)
    return Reference(position=best[0], messages=best[1]), list(messages[best[1] :])


def remember(ctx, position: int, messages: Sequence[dict]) -> None:
    """Note that the call at `position` sent `messages` (on first execution and replay alike)."""
    sent = _sent.setdefault(ctx, [])
    # Copies: workflow code may change its message dicts after the call.
    sent.append((position, [dict(message) for message in messages]))
    del sent[:-REMEMBERED]


# --- reading a call's whole conversation back ------------------------------------------


@dataclass
class Rebuilt:
    messages: list[dict]  # the last ones, oldest first
    total: int  # how many the model was sent
    missing: bool = False  # the chain is broken (a referenced checkpoint is gone): fewer are known

    @property
    def omitted(self) -> int:
        return max(self.total - len(self.messages), 0)


def sent_messages(request: Any) -> tuple[Reference | None, list[dict]]:
    """A recorded request's reference (None for a whole conversation) and its own messages."""
    if not isinstance(request, dict):
        return None, []
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    reference = request.get("history")
    if not isinstance(reference, dict):
        return None, messages
    try:
        return Reference(position=int(reference["position"]), messages=int(reference["messages"])), messages
    except (KeyError, TypeError, ValueError):
        return None, messages


def rebuild(request: Any, earlier: Iterable[tuple[int, Any]], limit: int) -> Rebuilt:
    """The last `limit` messages of a recorded call's conversation (meta["request"]).

    `earlier` yields (position, meta) of the run's earlier checkpoints, highest position
    first and, at one position, the checkpoint that was live when this call was recorded
    first (that is, the one with the highest id below this one's). It is read only as far
    back as the messages shown need.
    """
    reference, own = sent_messages(request)
    chunks = [own]
    count = len(own)
    total = count + (reference["messages"] if reference else 0)
    rows = iter(earlier)
    while reference is not None and count < limit:
        meta = _at(rows, reference["position"])
        if not isinstance(meta, dict):
            return Rebuilt(_last(chunks, limit), total, missing=True)
        reference, own = sent_messages(meta.get("request"))
        chunks.append(own)
        count += len(own)
    return Rebuilt(_last(chunks, limit), total)


def _at(rows, position: int) -> Any:
    for row_position, meta in rows:
        if row_position == position:
            return meta
        if row_position < position:
            return None
    return None


def _last(chunks: list[list[dict]], limit: int) -> list[dict]:
    messages = [message for chunk in reversed(chunks) for message in chunk]
    return messages[-limit:] if limit else []


# --- where rebuild reads earlier calls from ----------------------------------------------

# Rows fetched at a time while walking back a chain of references.
CHUNK = 64


def earlier_than(checkpoint) -> Iterator[tuple[int, Any]]:
    """The run's earlier model calls' metas from the database, for `rebuild`, read lazily."""
    if not _references(checkpoint):
        return iter(())
    from steps.models import Checkpoint

    rows = (
        Checkpoint.objects.filter(
            run_id=checkpoint.run_id, position__lt=checkpoint.position, id__lt=checkpoint.pk
        )
        .filter(Q(name="llm") | Q(name__startswith="llm:"))
        .order_by("-position", "-id")
        .values_list("position", "meta")
    )
    return rows.iterator(chunk_size=CHUNK)


def earlier_among(checkpoints: Iterable[Any], checkpoint) -> list[tuple[int, Any]]:
    """The same from checkpoints already read (a run page's), without a query."""
    if not _references(checkpoint):
        return []
    rows = [
        (other.position, other.pk, getattr(other, "meta", None))
        for other in checkpoints
        if other.position < checkpoint.position and other.pk < checkpoint.pk
    ]
    rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
    return [(position, meta) for position, _, meta in rows]


def _references(checkpoint) -> bool:
    meta = getattr(checkpoint, "meta", None)
    request = meta.get("request") if isinstance(meta, dict) else None
    return sent_messages(request)[0] is not None
