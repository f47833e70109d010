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


@contextmanager
def maintenance():
    """A transaction for sweeps, recoveries and wake-ups: it never waits on another's lock.

    On PostgreSQL a lock held by a frozen or partitioned worker makes the statement fail
    after DURABLE_MAINTENANCE_LOCK_TIMEOUT instead of stalling every sweep behind it; the
    caller skips that row and the next sweep tries again. SQLite serialises writers itself.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    [
                        f"{int(settings.DURABLE_MAINTENANCE_LOCK_TIMEOUT * 1000)}ms",
                        f"{int(settings.DURABLE_MAINTENANCE_STATEMENT_TIMEOUT * 1000)}ms",
                    ],
                )
        yield


def skip_locked(queryset):
    """Lock the rows of `queryset` for this transaction, leaving out rows others hold."""
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True)
    return queryset
