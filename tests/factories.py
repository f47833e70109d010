"""Test data for the dashboard tests, built in code: users with given rights, runs with steps.

`make_run` writes rows directly (no workflow executes), so a test can have a run in
any state. The workflows at the bottom execute for real, for tests that drive the
engine through the dashboard.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from runs.models import Run, Status, WaitKind
from runs.workflow import NonRetryableError, RetryPolicy, step, workflow
from steps.models import Attempt, Checkpoint, CheckpointStatus

PASSWORD = "correct horse battery staple"


def make_user(username: str, *codenames: str, staff: bool = False) -> User:
    """A user holding the given runs/steps permissions, e.g. "view_run", "operate"."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    if codenames:
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def make_viewer(username: str = "viola") -> User:
    return make_user(username, "view_run", "view_checkpoint", "view_attempt")


def make_operator(username: str = "otto", staff: bool = False) -> User:
    return make_user(
        username, "view_run", "operate", "change_run", "view_checkpoint", "change_checkpoint", staff=staff
    )


def make_run(
    status: str = Status.SUCCEEDED,
    steps: int = 3,
    *,
    workflow: str = "arithmetic",
    failed_at: int | None = None,
    attempts_per_step: int = 0,
    output=None,
    created_ago: timedelta = timedelta(minutes=5),
    **fields,
) -> Run:
    """A run in `status` with `steps` succeeded checkpoints (the last one failed if failed_at)."""
    now = timezone.now()
    created = now - created_ago
    run = Run.objects.create(
        workflow=workflow,
        input=fields.pop("input", {"a": 1, "b": 2}),
        status=status,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        finished_at=now
        if status in (Status.SUCCEEDED, Status.FAILED, Status.DEAD, Status.CANCELLED)
        else None,
        **fields,
    )
    moment = run.started_at
    for position in range(steps):
        for number in range(1, attempts_per_step + 1):
            Attempt.objects.create(
                run=run,
                position=position,
                name=f"step_{position}",
                number=number,
                started_at=moment,
                finished_at=moment + timedelta(milliseconds=200),
                error_type="TimeoutError",
                error_message=f"attempt {number} timed out",
                error_traceback=f"Traceback (most recent call last):\nTimeoutError: attempt {number}\n",
            )
            moment += timedelta(milliseconds=300)
        failed = position == failed_at
        Checkpoint.objects.create(
            run=run,
            position=position,
            name=f"step_{position}",
            status=CheckpointStatus.FAILED if failed else CheckpointStatus.SUCCEEDED,
            output=None if failed else (output if output is not None else {"value": position}),
            error_type="ValueError" if failed else "",
            error_message="bad value from the tool" if failed else "",
            error_traceback="Traceback (most recent call last):\nValueError: bad value from the tool\n"
            if failed
            else "",
            attempts=attempts_per_step + 1,
            started_at=moment,
            finished_at=moment + timedelta(milliseconds=500),
        )
        moment += timedelta(seconds=1)
    run.steps_done = steps
    run.current_step = f"step_{steps - 1}" if steps else ""
    if failed_at is not None:
        run.error_type = "ValueError"
        run.error_message = f"step 'step_{failed_at}' failed: bad value from the tool"
        run.error_traceback = "Traceback (most recent call last):\nValueError: bad value from the tool\n"
        run.error_position = failed_at
    run.save()
    return run


def make_failed_run(steps: int = 3, **fields) -> Run:
    return make_run(Status.FAILED, steps, failed_at=steps - 1, **fields)


def make_waiting_run(signal: str = "approve", **fields) -> Run:
    return make_run(
        Status.WAITING, 1, wait_kind=WaitKind.SIGNAL, wait_signal=signal, wait_position=1, **fields
    )


# --- workflows that execute for real --------------------------------------------------

# While true, `fetch_quote` fails for good; tests flip it to let a resume succeed.
FLAKY = {"fail": True}


@step
def prepare(order: str) -> dict:
    return {"order": order, "lines": 3}


@step(retry=RetryPolicy(max_attempts=1))
def fetch_quote(order: str) -> dict:
    if FLAKY["fail"]:
        raise NonRetryableError("quote service answered 503 Service Unavailable")
    return {"order": order, "cents": 1290}


@step
def book(quote: dict) -> dict:
    return {"booked": quote["cents"]}


@workflow("dashboard_flaky")
def dashboard_flaky(ctx, data):
    prepared = ctx.step(prepare, data["order"])
    quote = ctx.step(fetch_quote, prepared["order"])
    return ctx.step(book, quote)


@step
def echo(value):
    return value


@workflow("dashboard_echo")
def dashboard_echo(ctx, data):
    """Each step returns the input's "payload" untouched: untrusted text for the XSS tests."""
    first = ctx.step(echo, data["payload"])
    return {"echoed": ctx.step(echo, first)}
