"""Text search over runs: their input, output and error message, case-insensitive, in any script.

The two databases keep the text differently. PostgreSQL's jsonb prints characters as
they are, and its UPPER knows Unicode: there the search is UPPER(CAST(column AS TEXT))
LIKE UPPER(term). SQLite keeps JSON as the text Django wrote, with every non-ASCII
character as a \\u escape ("李雷" is stored as "\\u674e\\u96f7"), and its LIKE folds
ASCII case only. There the search compares a folded copy of the column, made by
`fold` (escapes decoded, case folded), which `register_sqlite_functions` installs on
each new SQLite connection. Either way the cost stays that of reading the column,
and the run list bounds how many runs one search reads (runs.views.run_list.search_page).
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db.models import JSONField, Lookup, Q, TextField

# The columns a search reads.
SEARCHED = ("input", "output", "error_message")
SQLITE_FOLD = "durable_fold"
# A run of \uXXXX escapes, decoded together so that surrogate pairs (emoji) join up.
ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")


def _decode(match: re.Match) -> str:
    try:
        return json.loads(f'"{match.group(0)}"')
    except ValueError:
        return match.group(0)


def fold(text: Any) -> str | None:
    """Text as the SQLite search compares it: \\u escapes decoded, case folded."""
    if text is None:
        return None
    text = str(text)
    if "\\u" in text:
        text = ESCAPES.sub(_decode, text)
    return text.casefold()


def like_pattern(text: str) -> str:
    """`%text%` for LIKE ... ESCAPE '\\', the term's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@JSONField.register_lookup
@TextField.register_lookup
class FoldedContains(Lookup):
    """`column__folded_contains=term`: the column's text contains term, ignoring case in
    any script. The term is matched as typed, never as JSON."""

    lookup_name = "folded_contains"
    prepare_rhs = False

    def process_rhs(self, compiler, connection):
        return "%s", [self.rhs]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"UPPER(CAST({lhs} AS TEXT)) LIKE UPPER(%s) ESCAPE '\\'", [*lhs_params, like_pattern(self.rhs)]

    def as_sqlite(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        pattern = like_pattern(fold(self.rhs) or "")
        return f"{SQLITE_FOLD}({lhs}) LIKE %s ESCAPE '\\'", [*lhs_params, pattern]


def text_condition(text: str) -> Q:
    """Runs whose input, output or error message contains `text`."""
    condition = Q()
    for column in SEARCHED:
        condition |= Q(**{f"{column}__folded_contains": text})
    return condition


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    """connection_created receiver: installs `fold` on every SQLite connection."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_FOLD, 1, fold, deterministic=True)
