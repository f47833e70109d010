"""Flow control: per-workflow concurrency limits, and database locks to enforce them.

Limits come from `@workflow(concurrency=N)`, overridden per workflow by the
DURABLE_CONCURRENCY setting. This module imports no models, so models can use it.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction

from runs.workflow import UnknownWorkflow, registry


def concurrency_limit(workflow: str) -> int | None:
    """How many runs of the workflow may hold a slot (pending or running) at once."""
    if workflow in settings.DURABLE_CONCURRENCY:
        return settings.DURABLE_CONCURRENCY[workflow]
    try:
        return registry.get(workflow).concurrency
    except UnknownWorkflow:
        return None


def entry_status(workflow: str) -> str:
    """Where a run (re)entering the line starts: queued for a slot, or pending at once."""
    return "queued" if concurrency_limit(workflow) is not None else "pending"


@contextmanager
def lock(name: str):
    """Serialise a critical section across every process, for the current transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: the transaction itself
    already holds the database's write lock (BEGIN IMMEDIATE), which serialises it.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])
        yield
