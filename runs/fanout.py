"""Executes one branch of a parallel group, on whichever worker its doorbell reaches.

A branch is a step call recorded in steps.models.Branch. When the last branch of a
group finishes, the parent run is woken; its replay then checkpoints the group.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from runs import liveness, tracing
from runs.engine import describe
from runs.models import ACTIVE_STATUSES, Run, ensure_json
from runs.workflow import StepInfo, _current_step, resolve_target, step_definition
from steps.models import Branch
from steps.retry import StepOutputError
from steps.timeouts import call_with_timeout, step_time_limit

log = logging.getLogger(__name__)


def execute_branch(branch_id: int, token: str | None = None) -> str:
    """Claim and run one branch. Returns what happened, for logs and tests."""
    token = token or uuid.uuid4().hex  # each claim its own token
    if not Branch.claim(branch_id, liveness.process_name(), token, run_statuses=list(ACTIVE_STATUSES)):
        return "skipped"
    try:
        branch = Branch.objects.select_related("run").get(pk=branch_id)
        outcome = _run(branch, token)
    except DatabaseError:
        log.warning("branch %s: database error; giving it back", branch_id, exc_info=True)
        liveness.give_back_branch(branch_id, token)
        return "database-error"
    if outcome in ("succeeded", "failed"):
        wake_parent_if_settled(branch)
    return outcome


def _run(branch: Branch, token: str) -> str:
    run = branch.run
    started = timezone.now()
    attempt = branch.attempts + 1
    try:
        definition = step_definition(resolve_target(branch.target))
    except Exception as exc:  # the code moved or vanished: nothing to retry
        return _failed(branch, token, attempt, started, exc, retry=False)

    if definition.rate_limit is not None:
        retry_at = definition.rate_limit.acquire()
        if retry_at is not None:
            return "held" if branch.hold(token, retry_at) else "lost"

    info = StepInfo(
        run_id=run.pk,
        name=branch.name,
        position=branch.position,
        attempt=attempt,
        idempotency_key=f"{run.step_idempotency_key(branch.position, branch.epoch)}.{branch.index}",
    )
    reset = _current_step.set(info)
    try:
        value = call_with_timeout(
            tracing.attempt(definition.fn, info),
            tuple(branch.args),
            branch.kwargs,
            step_time_limit(definition.timeout),
            own=bool(definition.timeout),
        )
        try:
            value = ensure_json(value, f"the output of step {branch.name!r}")
        except ValueError as exc:
            raise StepOutputError(str(exc)) from None
    except Exception as exc:
        return _failed(
            branch,
            token,
            attempt,
            started,
            exc,
            retry=definition.retry.should_retry(attempt, exc),
            delay=definition.retry.delay(attempt),
        )
    finally:
        _current_step.reset(reset)
    return "succeeded" if branch.succeed(token, value, info.meta or None) else "lost"


def _failed(branch, token, attempt, started, exc, *, retry: bool, delay: float = 0.0) -> str:
    record = dict(
        position=branch.position,
        name=branch.name,
        number=attempt,
        started_at=started,
        finished_at=timezone.now(),
        **describe(exc),
    )
    retry_at = timezone.now() + timedelta(seconds=delay) if retry else None
    if not branch.fail(token, record, retry_at):
        return "lost"
    return "retry" if retry else "failed"


def wake_parent_if_settled(branch: Branch) -> bool:
    """Wake the run if it waits on this branch's group and no branch of it is unfinished."""
    parent = (
        Run.objects.filter(pk=branch.run_id, wait_position=branch.position)
        .waiting_on_finished_branches()
        .only("pk", "queue", "workflow")
        .first()
    )
    return parent.wake() if parent else False
