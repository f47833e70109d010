"""Ringing a run's doorbell: a broker message that says "look at run N".

The message carries nothing but the run id. If it is lost, the sweep rings
again; if it is duplicated, the claim finds nothing to do.
"""

from __future__ import annotations

import logging

from django.db import transaction

log = logging.getLogger(__name__)


def ring(run_id: int, queue: str) -> None:
    from runs.tasks import execute

    try:
        execute.apply_async((run_id,), queue=queue)
    except Exception:
        # The run is safe in the database; the sweep will ring again.
        log.warning(
            "could not dispatch run %s to queue %s; the sweep will retry", run_id, queue, exc_info=True
        )


def ring_on_commit(run) -> None:
    run_id, queue = run.pk, run.queue
    transaction.on_commit(lambda: ring(run_id, queue))


def ring_branch(branch_id: int, queue: str) -> None:
    from runs.tasks import execute_branch

    try:
        execute_branch.apply_async((branch_id,), queue=queue)
    except Exception:
        log.warning("could not dispatch branch %s; the sweep will retry", branch_id, exc_info=True)


def ring_branch_on_commit(branch_id: int, queue: str) -> None:
    transaction.on_commit(lambda: ring_branch(branch_id, queue))
