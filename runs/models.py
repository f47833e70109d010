"""Runs, their signals, the audit log, and the worker processes that hold leases.

Every change of a run's status is a conditional UPDATE whose WHERE clause names
the states it may come from (and, for the worker, its lease token). The row
count says whether it happened; nothing here reads a status, decides in Python,
and then saves.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, connections, models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Cast, Coalesce, Substr
from django.db.models.sql import InsertQuery
from django.utils import timezone

from runs import dispatch
from runs.flow import concurrency_limit, entry_status, lock, maintenance, skip_locked
from runs.jsoninput import JSONInputError, StoredJSONDecoder, max_depth, text_depth, too_deep_message
from runs.workflow import MAX_NAME
from steps.models import Attempt, Branch, BranchStatus, Checkpoint, CheckpointStatus


class Status(models.TextChoices):
    QUEUED = "queued", "queued"  # held back by its workflow's concurrency limit; not dispatched yet
    PENDING = "pending", "pending"  # a doorbell is out; waiting for a worker to claim it
    RUNNING = "running", "running"  # a worker holds the lease and is executing steps
    WAITING = "waiting", "waiting"  # released: sleeping, backing off to retry, or awaiting a signal
    SUCCEEDED = "succeeded", "succeeded"  # the workflow returned; its output is recorded
    FAILED = "failed", "failed"  # the workflow raised; resume or retry from a step
    DEAD = "dead", "dead-lettered"  # its worker was lost too often; an operator decides
    CANCELLED = "cancelled", "cancelled"  # stopped by an operator; no further step runs


FINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.DEAD, Status.CANCELLED})
ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.PENDING, Status.RUNNING, Status.WAITING})

# Which status may follow which. Every update below asserts its move is listed.
TRANSITIONS: dict[str, frozenset[str]] = {
    # Admitted when a slot frees; failed only when an operator marks it so (Run.set_state).
    Status.QUEUED: frozenset({Status.PENDING, Status.CANCELLED, Status.FAILED}),
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset(
        {
            Status.WAITING,  # sleep, retry backoff, signal wait
            Status.SUCCEEDED,
            Status.FAILED,
            Status.CANCELLED,  # a requested cancel observed between steps
            Status.PENDING,  # lease lapsed: recovered and dispatched again
            Status.DEAD,  # lease lapsed once too often
        }
    ),
    # Woken (QUEUED instead when its workflow has a concurrency limit).
    Status.WAITING: frozenset({Status.PENDING, Status.QUEUED, Status.CANCELLED, Status.FAILED}),
    Status.SUCCEEDED: frozenset({Status.PENDING, Status.QUEUED}),  # retry from a step
    Status.FAILED: frozenset({Status.PENDING, Status.QUEUED}),  # resume, retry from a step, edit
    Status.DEAD: frozenset({Status.PENDING, Status.QUEUED}),  # resume, retry from a step, edit
    Status.CANCELLED: frozenset({Status.PENDING, Status.QUEUED}),  # retry from a step
}

# Runs in these states hold one of their workflow's concurrency slots.
SLOT_STATUSES = (Status.PENDING, Status.RUNNING)


class InvalidOperation(Exception):
    """An operator asked for something the run's current state does not allow."""


class UnknownQueue(ValueError):
    """A run was to start on a queue that no worker is configured to consume."""


def check_queue(queue: str) -> str:
    if queue not in settings.DURABLE_QUEUES:
        raise UnknownQueue(
            f"No worker consumes queue {queue!r}; the queues workers consume are "
            f"{', '.join(settings.DURABLE_QUEUES)} (the DURABLE_QUEUES setting)."
        )
    return queue


def check_transition(sources, target) -> None:
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise AssertionError(f"{source} -> {target} is not in the transition table")


# A \u0000 escape that is not itself escaped: PostgreSQL's jsonb cannot store it.
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def ensure_json(value: Any, what: str) -> Any:
    """Return value as it will read back from the database, or raise ValueError
    (JSONInputError) for what no JSON column should hold: see runs.jsoninput."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise JSONInputError(too_deep_message(what)) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
    if text_depth(text) > max_depth():
        raise JSONInputError(too_deep_message(what))
    if NUL_ESCAPE.search(text):
        raise ValueError(f"{what} contains a NUL character (\\u0000), which the database cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate, which is not valid Unicode") from None
    return json.loads(text)


def ensure_text(value: str, what: str) -> str:
    """Operator-supplied text (reasons, signal names) must be storable as it is."""
    if "\x00" in value:
        raise InvalidOperation(f"The {what} contains a NUL character, which cannot be stored.")
    return value


# What a run terminated by an operator records as its error.
TERMINATED_ERROR = {
    "error_type": "Terminated",
    "error_message": "terminated by an operator while running; resume it to go on",
}

# The longest gap between two doorbells for a run that stays pending.
MAX_REDISPATCH_GAP = 600


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _jsonable(value: Any) -> Any:
    """A field's value as an audit entry's details can hold it."""
    from django.core.serializers.json import DjangoJSONEncoder

    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def actor_label(by) -> str:
    if by is None:
        return "system"
    if isinstance(by, str):
        return by
    return by.get_username()


def code_versions_from(audit_details, current: str) -> list[str]:
    """The code versions a run ran under, oldest first, from its audit entries' details
    (oldest first): each change of version is recorded as {"code_version": {"before", "after"}}."""
    versions: list[str] = []
    for details in audit_details:
        change = details.get("code_version") if isinstance(details, dict) else None
        if not isinstance(change, dict):
            continue  # rendering stored data never fails
        if not versions:
            versions.append(str(change.get("before") or ""))
        versions.append(str(change.get("after") or ""))
    return versions or ([current] if current else [])


class RunQuerySet(models.QuerySet):
    def start(self, workflow: str, input: Any = None, **options) -> Run:
        """Create a pending run of a registered workflow and ring its doorbell."""
        return self.start_or_get(workflow, input, **options)[0]

    def start_or_get(
        self,
        workflow: str,
        input: Any = None,
        *,
        queue: str = "",
        by=None,
        dedupe_key: str | None = None,
        parent: Run | None = None,
        parent_position: int | None = None,
        priority: int = 0,
    ) -> tuple[Run, bool]:
        """Start a run, or return the run that already holds `dedupe_key` (created=False)."""
        from runs.workflow import registry

        definition = registry.get(workflow)
        queue = check_queue(queue or definition.queue or settings.DURABLE_QUEUE)
        data = ensure_json(input, "run input")
        if dedupe_key and (len(dedupe_key) > 200 or "\x00" in dedupe_key):
            raise ValueError("an idempotency key has at most 200 characters and no NUL")
        if dedupe_key:
            existing = self.filter(dedupe_key=dedupe_key).first()
            if existing is not None:
                return existing, False
        fields = dict(
            status=entry_status(definition.name),
            workflow=definition.name,
            input=data,
            queue=queue,
            code_version=definition.version,
            dedupe_key=dedupe_key or None,
            parent=parent,
            parent_position=parent_position,
            priority=priority,
            dispatched_at=timezone.now(),
        )
        try:
            if connection.vendor == "postgresql" and not connection.in_atomic_block:
                run = insert_with_audit(
                    Run(**fields), AuditEntry.build(None, "start", by, details={"workflow": definition.name})
                )
                run.announce()  # committed already: rings now
            else:
                with transaction.atomic():
                    run = self.create(**fields)
                    AuditEntry.record(run, "start", by, details={"workflow": definition.name})
                    run.announce()
        except IntegrityError:
            if not dedupe_key:
                raise
            return self.get(dedupe_key=dedupe_key), False  # a concurrent start won the key
        return run, True

    def awaiting_decision(self):
        """Runs waiting for a signal, the nearest deadline first (no deadline last).
        Read through the partial index run_waiting_kind."""
        waiting = self.filter(status=Status.WAITING, wait_kind=WaitKind.SIGNAL)
        return waiting.order_by(models.F("wake_at").asc(nulls_last=True), "id")

    def last_change(self) -> str:
        """A stamp that changes whenever any run does: every write to a run sets its
        updated_at, and a new run starts with one. One query, read from the index on
        updated_at, so the same cost at any table size (the run list's live refresh)."""
        latest = self.aggregate(latest=models.Max("updated_at"))["latest"]
        return f"{latest.timestamp():.6f}" if latest else "0"

    def claim(self, run_id: int, owner: str, token: str) -> bool:
        """Take the lease on a pending run. A duplicate doorbell finds nothing to claim."""
        check_transition([Status.PENDING], Status.RUNNING)
        now = timezone.now()
        return (
            self.filter(pk=run_id, status=Status.PENDING).update(
                status=Status.RUNNING,
                lease_owner=owner,
                lease_token=token,
                claims=F("claims") + 1,
                started_at=Coalesce(F("started_at"), Value(now)),
                updated_at=now,
            )
            == 1
        )

    def claimed(self, run_id: int, owner: str, token: str) -> Run | None:
        """claim(), returning the run as the claim left it; None when there was nothing to claim.

        One statement where the database can return the rows an UPDATE changed (PostgreSQL,
        SQLite 3.35+): a worker claims and reads its run in one round trip, not two.
        """
        if not _update_can_return():
            return self.get(pk=run_id) if self.claim(run_id, owner, token) else None
        check_transition([Status.PENDING], Status.RUNNING)
        now = timezone.now()
        params = [
            Status.RUNNING.value,
            owner,
            token,
            *_prepared(Run, {"started_at": now, "updated_at": now}),
            run_id,
            Status.PENDING.value,
        ]
        return next(iter(Run.objects.raw(_claim_statement(), params)), None)

    def orphaned(self):
        """Running runs whose worker process has stopped heartbeating."""
        return self.filter(status=Status.RUNNING).exclude(lease_owner__in=WorkerProcess.alive_names())

    def due_to_wake(self):
        """Waiting runs whose wake-up time has come, the most overdue first."""
        return self.filter(status=Status.WAITING, wake_at__lte=timezone.now()).order_by("wake_at", "id")

    def signalled_while_waiting(self):
        pending_signal = Signal.objects.filter(
            run=models.OuterRef("pk"), name=models.OuterRef("wait_signal"), consumed_at__isnull=True
        )
        return (
            self.filter(status=Status.WAITING, wait_kind=WaitKind.SIGNAL)
            .filter(models.Exists(pending_signal))
            .order_by("id")
        )

    def admit(self, workflow: str) -> int:
        """Move queued runs of a workflow to pending while it has free slots.

        Highest priority first, then oldest. Serialised per workflow by a lock, so two
        admissions at once cannot both count the same free slot.
        """
        check_transition([Status.QUEUED], Status.PENDING)
        limit = concurrency_limit(workflow)
        admitted = 0
        with lock(f"concurrency:{workflow}"):
            free = (
                None
                if limit is None
                else limit - self.filter(workflow=workflow, status__in=SLOT_STATUSES).count()
            )
            if free is not None and free <= 0:
                return 0
            line = self.filter(workflow=workflow, status=Status.QUEUED).order_by("-priority", "id")
            now = timezone.now()
            for run in line.only("pk", "queue", "workflow")[:free]:
                if self.filter(pk=run.pk, status=Status.QUEUED).update(
                    status=Status.PENDING, dispatched_at=now, updated_at=now
                ):
                    dispatch.ring_on_commit(run)
                    admitted += 1
        return admitted

    def queued_workflows(self) -> list[str]:
        return list(self.filter(status=Status.QUEUED).values_list("workflow", flat=True).distinct())

    def waiting_on_finished_children(self):
        finished_child = Run.objects.filter(
            parent=models.OuterRef("pk"),
            parent_position=models.OuterRef("wait_position"),
            status__in=list(FINAL_STATUSES),
        )
        return (
            self.filter(status=Status.WAITING, wait_kind=WaitKind.CHILD)
            .filter(models.Exists(finished_child))
            .order_by("id")
        )

    def waiting_on_finished_branches(self):
        unfinished = Branch.objects.live().filter(
            run=models.OuterRef("pk"),
            position=models.OuterRef("wait_position"),
            status__in=[BranchStatus.PENDING, BranchStatus.RUNNING, BranchStatus.WAITING],
        )
        return (
            self.filter(status=Status.WAITING, wait_kind=WaitKind.BRANCHES)
            .exclude(models.Exists(unfinished))
            .order_by("id")
        )

    def wake_batch(self, limit: int) -> list[int]:
        """Wake up to `limit` of these waiting runs in one statement, in this queryset's order.

        Returns the ids woken. Each becomes pending (its doorbell rings once the
        transaction commits) or, when its workflow has a concurrency limit, queued (the
        workflow's line is admitted after the commit). On PostgreSQL rows another
        transaction has locked are skipped, not waited for, so concurrent sweeps take
        disjoint batches.
        """
        with transaction.atomic(savepoint=False):
            if not _update_can_return():
                return _wake_then_read(_candidates(self).values_list("pk", "queue", "workflow")[:limit])
            return _wake(_wake_statement(self, limit))

    def wake_arrived(self, source: str, limit: int) -> list[int]:
        """`getattr(self, source)().wake_batch(limit)` for a source in ARRIVALS, built once.

        These candidate queries depend on no clock, so their statement is compiled once
        per process: compiling it took the ORM longer than the database took to run
        it when nothing had arrived, twice a second, in every sweep.
        """
        if source not in ARRIVALS:
            raise ValueError(f"{source!r} is not one of {ARRIVALS}")
        with transaction.atomic(savepoint=False):
            if not _update_can_return():
                return getattr(self, source)().wake_batch(limit)
            key = (connection.vendor, source, limit, tuple(_limited_workflows()))
            if key not in _arrival_statements:
                _arrival_statements[key] = _wake_statement(getattr(self, source)(), limit)
            return _wake(_arrival_statements[key])

    def unanswered(self):
        """Pending runs whose doorbell should have been answered by now (see Run.redispatch)."""
        cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_REDISPATCH_AFTER)
        return self.filter(status=Status.PENDING, dispatched_at__lt=cutoff).order_by("dispatched_at")


# The longest prompt a signal wait keeps; a longer one is cut (pages cap it again).
WAIT_PROMPT_CHARS = 1000
# Characters of what a run asks that the dashboard shows; the whole proposal is on the run page.
ASKED_CHARS = 600


def cap_prompt(prompt: Any) -> str:
    """A wait's prompt as stored: text, cut to WAIT_PROMPT_CHARS."""
    if not prompt:
        return ""
    return str(prompt)[:WAIT_PROMPT_CHARS]


class WaitKind(models.TextChoices):
    NONE = "", "-"
    SLEEP = "sleep", "sleep"
    RETRY = "retry", "retry backoff"
    SIGNAL = "signal", "signal"
    BRANCHES = "branches", "parallel branches"
    CHILD = "child", "child run"
    RATE = "rate", "rate limit"
    VERSION = "version", "a worker with its code version"


class Run(models.Model):
    workflow = models.CharField(max_length=200)
    input = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    output = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    queue = models.CharField(max_length=100, default="durable")
    # Base of every step's idempotency key; never changes for the life of the run.
    idempotency_key = models.CharField(max_length=32, default=new_idempotency_key, editable=False)
    # Bumped by retry-from-step, so re-executed steps get fresh idempotency keys.
    epoch = models.PositiveIntegerField(default=0)
    # Number of live checkpoints, which is also the next position to execute.
    steps_done = models.PositiveIntegerField(default=0)
    current_step = models.CharField(max_length=200, blank=True)

    error_type = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    # Position of the failed step whose error ended the run, if a step's did.
    error_position = models.PositiveIntegerField(null=True, blank=True)

    wait_kind = models.CharField(max_length=10, choices=WaitKind.choices, blank=True, default="")
    wait_signal = models.CharField(max_length=200, blank=True)
    wait_position = models.PositiveIntegerField(null=True, blank=True)
    # What a signal wait asks a person, as the workflow put it (wait_for_signal's prompt).
    wait_prompt = models.CharField(max_length=WAIT_PROMPT_CHARS, blank=True, default="")
    wake_at = models.DateTimeField(null=True, blank=True)

    lease_owner = models.CharField(max_length=200, blank=True)
    lease_token = models.CharField(max_length=64, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # An operator asked to stop the run inside its current step (see Run.terminate).
    terminate_requested = models.BooleanField(default=False)
    # Lost workers the run was recovered from (database errors do not count).
    recovery_count = models.PositiveIntegerField(default=0)
    # Of those, how many in a row at the current position: progress resets it, and
    # DURABLE_MAX_RECOVERIES of them dead-letter the run.
    lost_in_a_row = models.PositiveIntegerField(default=0)
    # Deliveries that claimed the run: a long run is handed back and claimed again.
    claims = models.PositiveIntegerField(default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    # The workflow's code version at start: the author's version string or a source hash.
    code_version = models.CharField(max_length=64, blank=True)
    # A client's idempotency key for starting: the same key returns the same run.
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    # Set on child runs started by another run's step.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    parent_position = models.PositiveIntegerField(null=True, blank=True)
    # Higher first when a concurrency limit holds runs back.
    priority = models.SmallIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        permissions = [("operate", "Can resume, retry, cancel, signal and edit runs")]
        indexes = [
            # Sweep: pending runs whose doorbell went unanswered (RunQuerySet.unanswered).
            models.Index(fields=["status", "dispatched_at"], name="run_status_dispatched"),
            # Sweep: due_to_wake, most overdue first (ORDER BY wake_at, id), read in index
            # order. Partial: only waiting runs, so other moves of status never touch it.
            # Status leads although the condition fixes it: SQLite without statistics (the
            # embedded default never runs ANALYZE) prefers the index matching most terms.
            models.Index(
                fields=["status", "wake_at", "id"],
                condition=Q(status=Status.WAITING),
                name="run_waiting_wake",
            ),
            # Sweep: signalled_while_waiting, waiting_on_finished_children and
            # waiting_on_finished_branches each read only the waiting runs of their wait
            # kind; without it they scanned every waiting run, sleepers included.
            models.Index(
                fields=["status", "wait_kind", "id"],
                condition=Q(status=Status.WAITING),
                name="run_waiting_kind",
            ),
            # Run list filtered by status or workflow, newest first (keyset on id).
            models.Index(fields=["status", "-id"], name="run_status_id"),
            models.Index(fields=["workflow", "-id"], name="run_workflow_id"),
            # The run list's live refresh: has any run changed since? (MAX(updated_at)).
            models.Index(fields=["updated_at"], name="run_updated_at"),
            # Overview (runs started in the last 24 h) and the started-between filter.
            models.Index(fields=["created_at"], name="run_created_at"),
            # Started-between combined with a status or a workflow filter, newest first.
            models.Index(fields=["status", "created_at"], name="run_status_created"),
            models.Index(fields=["workflow", "created_at"], name="run_workflow_created"),
            # Admission: slots in use and the queued line, per workflow.
            models.Index(fields=["workflow", "status", "-priority", "id"], name="run_admission"),
            # Child runs: a parent's children by position.
            models.Index(fields=["parent", "parent_position"], name="run_children"),
            # Supervisors and the sweep: the running runs a process holds.
            models.Index(fields=["lease_owner"], condition=Q(status="running"), name="run_running_owner"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} {self.workflow} ({self.status})"

    # --- reading -------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def live_checkpoints(self):
        return self.checkpoints.live().order_by("position")

    def failed_attempts_at(self, position: int) -> int:
        return Attempt.objects.live().filter(run=self, position=position).count()

    def backoff(self) -> dict[str, Any] | None:
        """For a run waiting to retry a step: which step, attempts failed of how many, next at.

        None for any other run, and for a retry wait with no failed attempt on record."""
        if not self.can_retry_now:
            return None
        failed = list(
            Attempt.objects.live()
            .filter(run=self, position=self.wait_position, branch__isnull=True)
            .order_by("number", "id")
            .values_list("name", "max_attempts")
        )
        if not failed:
            return None  # set by hand (the admin): nothing to count
        return {
            "position": self.wait_position,
            "step": failed[-1][0],
            "failed": len(failed),
            "max_attempts": failed[-1][1],
            "next_at": self.wake_at,
        }

    def code_versions(self) -> list[str]:
        """The code versions the run has run under, oldest first.

        Each resume, retry or edit under other code records the change in its audit entry
        (see _reopen), so the history is read from there.
        """
        changes = (
            self.audit_entries.filter(details__has_key="code_version")
            .order_by("id")
            .values_list("details", flat=True)
        )
        return code_versions_from(changes, self.code_version)

    def step_idempotency_key(self, position: int, epoch: int | None = None) -> str:
        return f"{self.idempotency_key}-{self.epoch if epoch is None else epoch}-{position}"

    def duration(self):
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    # --- the worker's writes (all conditional on the lease token) -------------

    def _leased(self, token: str):
        return Run.objects.filter(pk=self.pk, status=Status.RUNNING, lease_token=token)

    def record_checkpoint(self, token: str, **fields) -> str:
        """Commit a step's checkpoint and advance the run in one transaction.

        Returns "ok", "cancelled" (checkpoint kept, run stopped) or "lost" (another
        worker owns the run now; nothing was written).
        """
        position = fields["position"]
        now = timezone.now()
        advance = dict(
            steps_done=position + 1,
            current_step=fields["name"],
            updated_at=now,
            wait_kind="",
            wait_signal="",
            wait_prompt="",
            wait_position=None,
            wake_at=None,
            lost_in_a_row=0,  # progress: earlier lost workers no longer count
        )
        if advance_and_checkpoint(self.pk, token, advance, fields):
            outcome = "ok"
        else:
            # Not advanced: either an operator asked the run to stop (keep the checkpoint,
            # stop the run) or another worker owns the run now (write nothing).
            with transaction.atomic():
                outcome = self._stop_as_requested(token, advance)
                if outcome != "lost":
                    insert_checkpoint(self.pk, fields)
        if outcome != "lost":
            self.steps_done = position + 1
        return outcome

    def _stop_as_requested(self, token: str, fields: dict) -> str:
        """End a leased run whose cancel or terminate was requested; "lost" if it is not ours."""
        check_transition([Status.RUNNING], Status.CANCELLED)
        check_transition([Status.RUNNING], Status.FAILED)
        now = timezone.now()
        release = dict(fields, finished_at=now, updated_at=now, lease_owner="", lease_token="")
        if self._leased(token).filter(cancel_requested=True).update(**release, status=Status.CANCELLED):
            outcome = "cancelled"
        elif (
            self._leased(token)
            .filter(terminate_requested=True)
            .update(**release, status=Status.FAILED, **TERMINATED_ERROR)
        ):
            outcome = "terminated"
        else:
            return "lost"
        self.slot_freed()
        self.notify_parent()
        return outcome

    def record_failed_attempt(self, token: str, attempt: dict, retry_at) -> str:
        """Store a failed attempt and release the run until retry_at."""
        return self._suspend(
            token,
            WaitKind.RETRY,
            position=attempt["position"],
            wake_at=retry_at,
            before=lambda: Attempt.objects.create(run_id=self.pk, **attempt),
        )

    def record_final_failure(self, token: str, attempt: dict, **checkpoint) -> str:
        with transaction.atomic():
            outcome = self.record_checkpoint(token, **checkpoint)
            if outcome != "lost":
                Attempt.objects.create(run_id=self.pk, **attempt)
        return outcome

    def suspend(
        self, token: str, kind: str, *, position: int, wake_at=None, signal: str = "", prompt: str = ""
    ) -> str:
        return self._suspend(token, kind, position=position, wake_at=wake_at, signal=signal, prompt=prompt)

    def _suspend(self, token, kind, *, position, wake_at=None, signal="", prompt="", before=None) -> str:
        """Release the run to WAITING (or end it, if an operator asked it to stop)."""
        check_transition([Status.RUNNING], Status.WAITING)
        now = timezone.now()
        wait = dict(
            wait_kind=kind,
            wait_signal=signal,
            wait_prompt=cap_prompt(prompt),
            wait_position=position,
            wake_at=wake_at,
        )
        with transaction.atomic():
            updated = (
                self._leased(token)
                .filter(cancel_requested=False, terminate_requested=False)
                .update(**wait, status=Status.WAITING, lease_owner="", lease_token="", updated_at=now)
            )
            if not updated:
                outcome = self._stop_as_requested(token, wait)
                if outcome == "lost":
                    return "lost"
            if before:
                before()
            if updated:
                self.slot_freed()
        if kind == WaitKind.SIGNAL and Run.objects.filter(pk=self.pk).signalled_while_waiting().exists():
            # The signal arrived while we were deciding to wait: it must not be lost.
            self.wake()
        return "ok"

    def take_signal(self, token: str, name: str, position: int, started_at) -> tuple[str, Any]:
        """Consume the oldest unread signal of this name and checkpoint it, atomically.

        Returns ("taken", payload), ("none", None) when there is no such signal yet,
        or the checkpoint outcome ("cancelled", "lost") when the run left this worker.
        """
        with transaction.atomic():
            signal = self.signals.filter(name=name, consumed_at__isnull=True).order_by("id").first()
            if signal is None or not signal.consume(position):
                return "none", None
            outcome = self.record_checkpoint(
                token,
                position=position,
                name=f"signal:{name}",
                status=CheckpointStatus.SUCCEEDED,
                output={"payload": signal.payload, "signal_id": signal.pk},
                epoch=self.epoch,
                started_at=started_at,
                finished_at=timezone.now(),
            )
            if outcome == "lost":
                transaction.set_rollback(True)  # leave the signal for the worker that owns the run
                return "lost", None
        return ("taken" if outcome == "ok" else outcome), signal.payload

    def fan_out(self, token: str, position: int, specs: list[dict]) -> tuple[str, Any]:
        """Create the parallel group's missing branches and wait for them, atomically.

        Returns ("finished", branches in call order) when every branch is done,
        ("waiting", None) when the run was released to wait for them, ("diverged",
        message) when recorded branches differ from the calls, or ("lost", None).
        """
        with transaction.atomic():
            recorded = {b.index: b for b in Branch.objects.live().filter(run=self, position=position)}
            names = [spec["name"] for spec in specs]
            for index, branch in recorded.items():
                if index >= len(specs) or branch.name != names[index]:
                    called = names[index] if index < len(specs) else "nothing"
                    return "diverged", (
                        f"Replay of run {self.pk} diverged at position {position}.{index}: the code calls "
                        f"{called!r} there but the recorded branch is {branch.name!r}."
                    )
            if len(recorded) == len(specs) and all(b.is_finished for b in recorded.values()):
                return "finished", [recorded[index] for index in range(len(specs))]
            if self._suspend(token, WaitKind.BRANCHES, position=position) == "lost":
                transaction.set_rollback(True)
                return "lost", None
            now = timezone.now()
            created = Branch.objects.bulk_create(
                Branch(run=self, position=position, index=index, epoch=self.epoch, dispatched_at=now, **spec)
                for index, spec in enumerate(specs)
                if index not in recorded
            )
            for branch in created:
                dispatch.ring_branch_on_commit(branch.pk, self.queue)
        if Run.objects.filter(pk=self.pk).waiting_on_finished_branches().exists():
            self.wake()  # the last branch finished while we were deciding to wait
        return "waiting", None

    def child_at(self, token: str, position: int, workflow: str, input: Any, wait: bool, started_at):
        """Start (once) the child run for this position; record it, or wait for it to finish.

        Returns (outcome, value): ("ok", output), ("failed", error fields), ("waiting", None),
        or the checkpoint outcome ("cancelled", "lost").
        """
        name = f"child:{workflow}"
        child, _ = Run.objects.start_or_get(
            workflow,
            input,
            dedupe_key=f"child:{self.step_idempotency_key(position)}",
            parent=self,
            parent_position=position,
            by=f"run {self.pk}",
        )
        record = dict(
            position=position,
            name=name,
            epoch=self.epoch,
            started_at=started_at,
            meta={"child_run": child.pk},
        )
        if not wait:
            value = {"run_id": child.pk}
            outcome = self.record_checkpoint(
                token, **record, status=CheckpointStatus.SUCCEEDED, output=value, finished_at=timezone.now()
            )
            return outcome, value
        if child.status == Status.SUCCEEDED:
            outcome = self.record_checkpoint(
                token,
                **record,
                status=CheckpointStatus.SUCCEEDED,
                output=child.output,
                finished_at=timezone.now(),
            )
            return outcome, child.output
        if child.is_final:
            error = dict(
                error_type="ChildRunFailed",
                error_message=(
                    f"child run {child.pk} ({workflow}) ended {child.get_status_display()}"
                    + (f": {child.error_type}: {child.error_message}" if child.error_type else "")
                ),
                error_traceback=child.error_traceback,
            )
            outcome = self.record_checkpoint(
                token, **record, status=CheckpointStatus.FAILED, finished_at=timezone.now(), **error
            )
            return ("failed" if outcome == "ok" else outcome), error
        outcome = self._suspend(token, WaitKind.CHILD, position=position)
        if outcome == "ok" and Run.objects.filter(pk=self.pk).waiting_on_finished_children().exists():
            self.wake()  # the child finished while we were deciding to wait
        return ("waiting" if outcome == "ok" else outcome), None

    def finish(self, token: str, *, output=None, error: dict | None = None) -> bool:
        now = timezone.now()
        fields: dict[str, Any] = dict(finished_at=now, updated_at=now, lease_owner="", lease_token="")
        if error is None:
            check_transition([Status.RUNNING], Status.SUCCEEDED)
            fields.update(status=Status.SUCCEEDED, output=output)
        else:
            check_transition([Status.RUNNING], Status.FAILED)
            fields.update(status=Status.FAILED, **error)
        with transaction.atomic():
            finished = self._leased(token).update(**fields) == 1
            if finished:
                self.slot_freed()
                self.notify_parent()
        return finished

    # --- recovery and wake-ups (sweep, lost prefork children) -----------------

    def recover(self, reason: str) -> str | None:
        """Take a running run back from a lost worker: dispatch it again or dead-letter it.

        Counts one loss at the run's current position; DURABLE_MAX_RECOVERIES losses in a
        row there (progress resets the count) dead-letter the run.
        """
        return self._take_back(self.lease_token, reason, lost=True)

    def give_back(self, token: str, reason: str) -> str | None:
        """The holder itself could not go on (the database failed it): dispatch the run again.

        Not a lost worker, so not counted towards dead-lettering.
        """
        return self._take_back(token, reason, lost=False)

    def _take_back(self, token: str, reason: str, *, lost: bool) -> str | None:
        for target in (Status.PENDING, Status.DEAD, Status.CANCELLED, Status.FAILED):
            check_transition([Status.RUNNING], target)
        now = timezone.now()
        limit = settings.DURABLE_MAX_RECOVERIES
        dead = Q(lost_in_a_row__gte=limit) if lost else Q(pk__in=[])
        cancel, terminate = Q(cancel_requested=True), Q(terminate_requested=True)
        ends = cancel | terminate | dead
        as_dead = ~cancel & ~terminate & dead
        dead_message = f"worker lost {limit + 1} times in a row at one step; dead-lettered for an operator"
        with maintenance():
            held = Run.objects.filter(pk=self.pk, status=Status.RUNNING, lease_token=token)
            if not skip_locked(held).values_list("pk", flat=True):
                return None  # taken already, or its row is locked by a frozen holder: next sweep
            held.update(
                status=Case(
                    When(cancel, then=Value(Status.CANCELLED)),
                    When(terminate, then=Value(Status.FAILED)),
                    When(dead, then=Value(Status.DEAD)),
                    default=Value(Status.PENDING),
                ),
                finished_at=Case(
                    When(ends, then=Value(now)), default=None, output_field=models.DateTimeField()
                ),
                error_type=Case(
                    When(~cancel & terminate, then=Value(TERMINATED_ERROR["error_type"])),
                    When(as_dead, then=Value("WorkerLost")),
                    default=F("error_type"),
                    output_field=models.CharField(),
                ),
                error_message=Case(
                    When(~cancel & terminate, then=Value(TERMINATED_ERROR["error_message"])),
                    When(as_dead, then=Value(dead_message)),
                    default=F("error_message"),
                    output_field=models.TextField(),
                ),
                recovery_count=F("recovery_count") + int(lost),
                lost_in_a_row=F("lost_in_a_row") + int(lost),
                lease_owner="",
                lease_token="",
                dispatched_at=now,
                updated_at=now,
            )
            self.refresh_from_db(fields=["status", "queue", "workflow", "recovery_count", "steps_done"])
            details = {"outcome": self.status, "position": self.steps_done, "counted": lost}
            AuditEntry.record(self, "recover" if lost else "release", None, reason=reason, details=details)
            if self.status == Status.PENDING:
                dispatch.ring_on_commit(self)
            else:
                self.slot_freed()
                self.notify_parent()
        return self.status

    def interrupted(self, token: str, cause: str, message: str) -> str | None:
        """The step of a run held under `token` was stopped from outside (its process killed).

        Records the interrupted attempt, then ends the run as the operator asked (cancel,
        terminate) or, for a step over its time limit, dispatches it again: the attempt
        counts against the step's retry policy, not as a lost worker.
        """
        check_transition([Status.RUNNING], Status.PENDING)
        now = timezone.now()
        with maintenance():
            held = Run.objects.filter(pk=self.pk, status=Status.RUNNING, lease_token=token)
            row = skip_locked(held).values("steps_done", "claims", "updated_at").first()
            if row is None:
                return None
            Attempt.objects.create(
                run_id=self.pk,
                position=row["steps_done"],
                name=f"step at position {row['steps_done']}",
                number=Attempt.objects.live().filter(run_id=self.pk, position=row["steps_done"]).count() + 1,
                started_at=row["updated_at"],
                finished_at=now,
                error_type=cause,
                error_message=message,
            )
            outcome = self._stop_as_requested(token, {})
            if outcome == "lost":
                held.update(
                    status=Status.PENDING, lease_owner="", lease_token="", dispatched_at=now, updated_at=now
                )
                self.refresh_from_db(fields=["queue", "workflow"])
                dispatch.ring_on_commit(self)
                outcome = "pending"
        return outcome

    def hand_back(self, token: str) -> str:
        """End this delivery at a step boundary; a fresh doorbell lets any worker go on.

        Returns "handed-back", or how the run ended if an operator asked it to stop, or "lost".
        """
        check_transition([Status.RUNNING], Status.PENDING)
        now = timezone.now()
        with transaction.atomic():
            handed = (
                self._leased(token)
                .filter(cancel_requested=False, terminate_requested=False)
                .update(
                    status=Status.PENDING, lease_owner="", lease_token="", dispatched_at=now, updated_at=now
                )
            )
            if not handed:
                return self._stop_as_requested(token, {})
            dispatch.ring_on_commit(self)
        return "handed-back"

    def wake(self) -> bool:
        target = entry_status(self.workflow)
        check_transition([Status.WAITING], target)
        now = timezone.now()
        with transaction.atomic():
            woken = Run.objects.filter(pk=self.pk, status=Status.WAITING).update(
                status=target, dispatched_at=now, updated_at=now
            )
            if woken:
                self.status = target
                self.announce()
        return bool(woken)

    def announce(self) -> None:
        """After the run (re)entered the line: ring its doorbell, or queue it for a slot."""
        if self.status == Status.QUEUED:
            workflow = self.workflow
            transaction.on_commit(lambda: Run.objects.admit(workflow))
        else:
            dispatch.ring_on_commit(self)

    def slot_freed(self) -> None:
        """The run stopped holding a concurrency slot; let a queued run of its workflow in."""
        if concurrency_limit(self.workflow) is not None:
            workflow = self.workflow
            transaction.on_commit(lambda: Run.objects.admit(workflow))

    def notify_parent(self) -> None:
        """A child run finished: wake its parent if it is waiting for this child."""
        if self.parent_id is None:
            return
        parents = Run.objects.filter(
            pk=self.parent_id,
            status=Status.WAITING,
            wait_kind=WaitKind.CHILD,
            wait_position=self.parent_position,
        ).only("pk", "queue", "workflow")
        for parent in parents:
            transaction.on_commit(parent.wake)

    def due_for_redispatch(self, now) -> bool:
        """Ring again only after as long as the run has already waited since its last ring.

        Pending since `updated_at`, last rung at `dispatched_at`: the gaps double (15 s,
        30 s, 1 min...), so a deep but healthy backlog is not flooded with duplicate
        doorbells, while a lost message is still found within a few intervals.
        """
        waited_before = (self.dispatched_at - self.updated_at).total_seconds()
        since_ring = (now - self.dispatched_at).total_seconds()
        return since_ring >= max(settings.DURABLE_REDISPATCH_AFTER, min(waited_before, MAX_REDISPATCH_GAP))

    def redispatch(self) -> bool:
        now = timezone.now()
        if not self.due_for_redispatch(now):
            return False
        with transaction.atomic():
            rung = Run.objects.filter(
                pk=self.pk, status=Status.PENDING, dispatched_at=self.dispatched_at
            ).update(dispatched_at=now)
            if rung:
                dispatch.ring_on_commit(self)
        return bool(rung)

    # --- operator operations ----------------------------------------------------

    def _reopen(self, allowed, action: str, **fields) -> dict[str, Any]:
        """Move the run from one of `allowed` back into line, or explain why not.

        The run continues under the code deployed here, so it records that version;
        returns the change for the audit entry ({} when the version is the same).
        """
        target = entry_status(self.workflow)
        check_transition(allowed, target)
        now = timezone.now()
        recorded = Run.objects.filter(pk=self.pk).values_list("code_version", flat=True).first()
        deployed = self.deployed_version()
        if deployed is not None:
            fields.setdefault("code_version", deployed)
        updated = Run.objects.filter(pk=self.pk, status__in=allowed).update(
            status=target,
            output=None,
            error_type="",
            error_message="",
            error_traceback="",
            error_position=None,
            wait_kind="",
            wait_signal="",
            wait_prompt="",
            wait_position=None,
            wake_at=None,
            cancel_requested=False,
            terminate_requested=False,
            lost_in_a_row=0,
            finished_at=None,
            dispatched_at=now,
            updated_at=now,
            **fields,
        )
        if not updated:
            self.refresh_from_db(fields=["status"])
            names = ", ".join(Status(s).label for s in allowed)
            raise InvalidOperation(
                f"Cannot {action} run {self.pk}: it is {self.get_status_display()} "
                f"(allowed when the run is {names})."
            )
        if deployed is None or deployed == recorded:
            return {}
        return {"code_version": {"before": recorded, "after": deployed}}

    def resume(self, by=None, reason: str = "") -> None:
        """Continue a failed or dead-lettered run from where it stopped.

        If a step's failure ended the run, that failure checkpoint is superseded so the
        step gets a fresh set of attempts; its idempotency key stays the same, because
        an earlier attempt may have reached the external system.
        """
        with transaction.atomic():
            failed_at = Run.objects.filter(pk=self.pk).values_list("error_position", flat=True).first()
            details: dict[str, Any] = self._reopen([Status.FAILED, Status.DEAD], "resume", recovery_count=0)
            if failed_at is not None:
                step = self.checkpoints.live().filter(position=failed_at, status=CheckpointStatus.FAILED)
                if step.exists():
                    Checkpoint.objects.supersede_from(self, failed_at)
                    Attempt.objects.supersede_from(self, failed_at)
                    # A failed parallel group re-runs only its failed branches.
                    Branch.objects.supersede_from(self, failed_at, statuses=[BranchStatus.FAILED])
                    Run.objects.filter(pk=self.pk).update(steps_done=failed_at)
                    details["superseded_from"] = failed_at
                    # A failed child run is resumed with its parent; finished ones are kept.
                    for child in self.children.filter(
                        parent_position=failed_at, status__in=[Status.FAILED, Status.DEAD]
                    ):
                        child.resume(by=by, reason=f"parent run {self.pk} resumed")
            AuditEntry.record(self, "resume", by, reason=reason, details=details)
            self.status = entry_status(self.workflow)
            self.announce()
        self.refresh_from_db()

    def retry_from(
        self, position: int, by=None, reason: str = "", *, reuse_signals: bool = False
    ) -> dict[str, Any]:
        """Re-execute the run from `position`: later checkpoints are superseded, not deleted.

        The run's epoch goes up, so the re-executed steps get new idempotency keys: the
        operator asked for their side effects to happen again. A signal the superseded
        steps had received is waited for anew, unless `reuse_signals`: then each is sent
        again (a copy, the original stays consumed) for the replayed wait to take.
        Returns the audit entry's details.
        """
        with transaction.atomic():
            live = self.checkpoints.live().count()
            if not 0 <= position < live:
                raise InvalidOperation(
                    f"Run {self.pk} has no step at position {position}; "
                    + (f"its steps are at positions 0 to {live - 1}." if live else "it has no steps yet.")
                )
            details = self._reopen(
                [Status.FAILED, Status.DEAD, Status.SUCCEEDED, Status.CANCELLED],
                "retry",
                epoch=F("epoch") + 1,
                steps_done=position,
                recovery_count=0,
            )
            if reuse_signals:  # read before the steps that received them are superseded
                details["reused_signals"] = self._resend_signals_from(position, by)
            details.update(from_position=position, **self._supersede_from(position, by, "retried"))
            AuditEntry.record(self, "retry", by, reason=reason, details=details)
            self.status = entry_status(self.workflow)
            self.announce()
        self.refresh_from_db()
        return details

    def _supersede_from(self, position: int, by, how: str) -> dict[str, Any]:
        """Mark everything recorded from `position` on superseded; stop children started there."""
        superseded = Checkpoint.objects.supersede_from(self, position)
        Attempt.objects.supersede_from(self, position)
        Branch.objects.supersede_from(self, position)
        # Children started at the superseded positions are replaced on replay (their
        # dedupe key includes the epoch); the unfinished ones are stopped.
        superseded_children = self.children.filter(
            parent_position__gte=position, status__in=list(ACTIVE_STATUSES)
        ).only("pk", "workflow")
        for child in superseded_children:
            try:
                child.cancel(by=by, reason=f"parent run {self.pk} {how} from step {position}")
            except InvalidOperation:
                pass  # it finished meanwhile
        return {"superseded": superseded}

    def signals_received_from(self, position: int):
        """Signals consumed by the live steps at `position` and after (what a retry would wait for again)."""
        # A signal step's checkpoint names the signal it took (see take_signal).
        outputs = self.checkpoints.live().filter(position__gte=position, name__startswith="signal:")
        ids = [
            output.get("signal_id")
            for output in outputs.values_list("output", flat=True)
            if isinstance(output, dict)
        ]
        return self.signals.filter(pk__in=[pk for pk in ids if isinstance(pk, int)])

    def last_signal_position(self) -> int | None:
        """The last live position that received a signal: a retry at or before it goes back across one."""
        signals = self.checkpoints.live().filter(name__startswith="signal:")
        return signals.aggregate(last=models.Max("position"))["last"]

    def _resend_signals_from(self, position: int, by) -> list[int]:
        received = list(self.signals_received_from(position).order_by("id"))
        Signal.objects.bulk_create(
            Signal(run=self, name=signal.name, payload=signal.payload, sent_by=actor_label(by))
            for signal in received
        )
        return [signal.pk for signal in received]

    def cancel(self, by=None, reason: str = "") -> str:
        """Cancel now if no worker holds the run; else its worker interrupts the step (runs.liveness)."""
        check_transition([Status.QUEUED, Status.PENDING, Status.WAITING], Status.CANCELLED)
        now = timezone.now()
        with transaction.atomic():
            if Run.objects.filter(
                pk=self.pk, status__in=[Status.QUEUED, Status.PENDING, Status.WAITING]
            ).update(status=Status.CANCELLED, finished_at=now, updated_at=now):
                outcome = "cancelled"
                self.slot_freed()
                self.notify_parent()
            elif Run.objects.filter(pk=self.pk, status=Status.RUNNING).update(
                cancel_requested=True, updated_at=now
            ):
                outcome = "cancel requested"
            else:
                self.refresh_from_db(fields=["status"])
                raise InvalidOperation(
                    f"Cannot cancel run {self.pk}: it is already {self.get_status_display()}."
                )
            AuditEntry.record(self, "cancel", by, reason=reason, details={"outcome": outcome})
            # Cancelling a parent cancels the children it started that are still going.
            for child in self.children.filter(status__in=list(ACTIVE_STATUSES)).only("pk", "workflow"):
                try:
                    child.cancel(by=by, reason=f"parent run {self.pk} cancelled")
                except InvalidOperation:
                    pass  # it finished meanwhile
        self.refresh_from_db()
        return outcome

    def terminate(self, by=None, reason: str = "") -> str:
        """Stop a running run inside its current step; it ends failed, and can be resumed.

        The worker process executing the step is killed by its supervisor (see
        runs.liveness); a run whose worker is gone is ended by the sweep.
        """
        now = timezone.now()
        with transaction.atomic():
            if not Run.objects.filter(pk=self.pk, status=Status.RUNNING).update(
                terminate_requested=True, updated_at=now
            ):
                self.refresh_from_db(fields=["status"])
                raise InvalidOperation(
                    f"Cannot terminate run {self.pk}: it is {self.get_status_display()}; only a running "
                    "run can be terminated (cancel one that is not running)."
                )
            AuditEntry.record(self, "terminate", by, reason=reason, details={"holder": self.lease_owner})
        self.refresh_from_db()
        return "terminate requested"

    def set_state(self, target: str, by=None, reason: str = "", **fields) -> dict:
        """An operator moves a stuck run by hand (the admin), along the transition table.

        Checks what the target needs: waiting needs its wait (a signal and its position, a
        wake time for a sleep, retry or rate wait, a position for a child or branches);
        succeeded needs an output and clears the error; failed needs an error message.
        Leaving running drops the lease, so the worker's late writes are refused. Conditional
        on the status the operator saw; returns each changed field's before and after.
        """
        current, now = self.status, timezone.now()
        rewait = target == current == Status.WAITING  # a waiting run's wait edited in place
        if not rewait and target not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current]))
            raise InvalidOperation(f"A {current} run cannot become {target}; it can become: {allowed}.")
        values: dict[str, Any] = {"status": target, "updated_at": now, "lease_owner": "", "lease_token": ""}
        if target == Status.WAITING:
            values.update(self._wait_fields(fields))
        elif target == Status.SUCCEEDED:
            if fields.get("output") is None:
                raise InvalidOperation("A succeeded run needs an output (JSON).")
            values.update(output=ensure_json(fields["output"], "the output"), finished_at=now)
            values.update(error_type="", error_message="", error_traceback="", error_position=None)
        elif target == Status.FAILED:
            message = ensure_text((fields.get("error_message") or "").strip(), "error message")
            if not message:
                raise InvalidOperation("A failed run needs an error message saying why.")
            values.update(error_type="MarkedFailed", error_message=message, finished_at=now)
        elif target in (Status.CANCELLED, Status.DEAD):
            values.update(finished_at=now)
        else:  # back in line
            values.update(finished_at=None, dispatched_at=now, wait_kind="", wait_signal="")
            values.update(wait_prompt="", wait_position=None, wake_at=None)
        with transaction.atomic():
            before = Run.objects.filter(pk=self.pk).values(*values).first() or {}
            if not Run.objects.filter(pk=self.pk, status=current).update(**values):
                raise InvalidOperation(f"Run {self.pk} changed meanwhile; nothing was saved.")
            changes = {
                name: {"before": _jsonable(before.get(name)), "after": _jsonable(value)}
                for name, value in values.items()
                if name != "updated_at" and before.get(name) != value
            }
            AuditEntry.record(self, "set state", by, reason=reason, details={"changed": changes})
            self.status = target
            if target in (Status.PENDING, Status.QUEUED):
                self.announce()
            elif target in FINAL_STATUSES:
                self.slot_freed()
                self.notify_parent()
        self.refresh_from_db()
        return changes

    @staticmethod
    def _wait_fields(fields: dict) -> dict:
        kind = fields.get("wait_kind") or ""
        wait = {name: fields.get(name) for name in ("wait_signal", "wait_position", "wake_at")}
        if kind == WaitKind.SIGNAL and not (wait["wait_signal"] and wait["wait_position"] is not None):
            raise InvalidOperation("A run waiting for a signal needs the signal's name and its position.")
        if (
            kind in (WaitKind.SLEEP, WaitKind.RETRY, WaitKind.RATE, WaitKind.VERSION)
            and wait["wake_at"] is None
        ):
            raise InvalidOperation(f"A run waiting for a {kind} needs its wake time.")
        if kind in (WaitKind.CHILD, WaitKind.BRANCHES) and wait["wait_position"] is None:
            raise InvalidOperation("A run waiting for a child or branches needs their position.")
        if kind not in WaitKind.values or not kind:
            raise InvalidOperation("A waiting run needs a wait kind.")
        prompt = cap_prompt(fields.get("wait_prompt")) if kind == WaitKind.SIGNAL else ""
        return {
            "wait_kind": kind,
            **wait,
            "wait_signal": wait["wait_signal"] or "",
            "wait_prompt": prompt,
            "finished_at": None,
        }

    def mark_failed(self, by=None, reason: str = "") -> None:
        """End a run that is not running as failed, with the operator's reason as its error."""
        if self.status == Status.RUNNING:
            raise InvalidOperation(f"Run {self.pk} is running: terminate it to stop its step.")
        self.set_state(Status.FAILED, by=by, reason=reason, error_message=reason or "marked failed")

    def send_signal(self, name: str, payload: Any = None, by=None, reason: str = "") -> Signal:
        """Deliver a named signal; a run that is not waiting for it yet keeps it for later."""
        name = ensure_text((name or "").strip(), "signal name")
        if not name:
            raise InvalidOperation("A signal needs a name.")
        if len(name) > MAX_NAME:
            raise InvalidOperation(f"A signal name has at most {MAX_NAME} characters.")
        try:
            payload = ensure_json(payload, "signal payload")
        except ValueError as exc:
            raise InvalidOperation(str(exc)) from None
        with transaction.atomic():
            # Lock-free guard: the insert only stands if the run is still unfinished.
            touched = Run.objects.filter(pk=self.pk, status__in=list(ACTIVE_STATUSES)).update(
                updated_at=timezone.now()
            )
            if not touched:
                self.refresh_from_db(fields=["status"])
                raise InvalidOperation(
                    f"Cannot signal run {self.pk}: it is already {self.get_status_display()}."
                )
            signal = Signal.objects.create(run=self, name=name, payload=payload, sent_by=actor_label(by))
            AuditEntry.record(self, "signal", by, reason=reason, details={"name": name, "payload": payload})
        if Run.objects.filter(pk=self.pk, wait_signal=name).signalled_while_waiting().exists():
            self.wake()
        self.refresh_from_db()
        return signal

    def decide(self, payload: Any, *, at: int | None, by=None, reason: str = "") -> Signal:
        """Answer the signal wait a person was shown (the one at position `at`).

        Unlike send_signal, which keeps an early signal for later, a decision is refused
        once the run no longer waits there or someone has answered already: two
        operators deciding at once cannot both be taken.
        """
        try:
            payload = ensure_json(payload, "decision")
        except ValueError as exc:
            raise InvalidOperation(str(exc)) from None
        with transaction.atomic():
            # The update locks the row until commit: a second decision waits here, then
            # finds the first one's signal below.
            touched = Run.objects.filter(
                pk=self.pk, status=Status.WAITING, wait_kind=WaitKind.SIGNAL, wait_position=at
            ).update(updated_at=timezone.now())
            if not touched:
                raise InvalidOperation(f"Run {self.pk} no longer waits for this decision.")
            self.refresh_from_db(fields=["wait_signal"])
            if self.signals.filter(name=self.wait_signal, consumed_at__isnull=True).exists():
                raise InvalidOperation(f"Run {self.pk} has been answered already; it continues shortly.")
            signal = Signal.objects.create(
                run=self, name=self.wait_signal, payload=payload, sent_by=actor_label(by)
            )
            details = {"name": self.wait_signal, "payload": payload}
            AuditEntry.record(self, "decide", by, reason=reason, details=details)
        if Run.objects.filter(pk=self.pk, wait_signal=signal.name).signalled_while_waiting().exists():
            self.wake()
        self.refresh_from_db()
        return signal

    def _live_checkpoint_at(self, position: int) -> Checkpoint:
        old = self.checkpoints.live().filter(position=position).first()
        if old is None:
            raise InvalidOperation(f"Run {self.pk} has no live checkpoint at position {position}.")
        return old

    def edit_checkpoint(self, position: int, output: Any, by=None, reason: str = "") -> Checkpoint:
        """Replace the output of a live checkpoint, keep the old one superseded, and resume."""
        output = edited_output(output)
        with transaction.atomic():
            old = self._live_checkpoint_at(position)
            reopened = self._reopen([Status.FAILED, Status.DEAD], "edit and resume", recovery_count=0)
            Checkpoint.objects.filter(pk=old.pk).update(superseded_at=timezone.now())
            new = self._edited_copy(old, output)
            details = {
                "position": position,
                "before": old.output if old.status == CheckpointStatus.SUCCEEDED else None,
                "before_error": f"{old.error_type}: {old.error_message}" if old.error_type else "",
                "after": output,
            }
            AuditEntry.record(self, "edit", by, reason=reason, details=details)
            AuditEntry.record(self, "resume", by, reason=reason, details={"after_edit": position, **reopened})
            self.status = entry_status(self.workflow)
            self.announce()
        self.refresh_from_db()
        return new

    def edit_and_continue(self, position: int, output: Any, by=None, reason: str = "") -> Checkpoint:
        """Replace a step's output and run every later step again from it.

        The edited checkpoint stays live (the old one is kept, superseded); the later
        checkpoints, attempts and branches are superseded, and the run resumes at the next
        position. Like a retry it bumps the epoch: the later steps are called with new
        values, so they get new idempotency keys.
        """
        output = edited_output(output)
        with transaction.atomic():
            old = self._live_checkpoint_at(position)
            details = self._reopen(
                [Status.FAILED, Status.DEAD, Status.SUCCEEDED, Status.CANCELLED],
                "edit and continue",
                epoch=F("epoch") + 1,
                steps_done=position + 1,
                recovery_count=0,
            )
            Checkpoint.objects.filter(pk=old.pk).update(superseded_at=timezone.now())
            new = self._edited_copy(old, output)
            details.update(
                position=position,
                name=old.name,
                before=old.output if old.status == CheckpointStatus.SUCCEEDED else None,
                before_error=f"{old.error_type}: {old.error_message}" if old.error_type else "",
                after=output,
                **self._supersede_from(position + 1, by, "edited and continued"),
            )
            AuditEntry.record(self, "edit and continue", by, reason=reason, details=details)
            self.status = entry_status(self.workflow)
            self.announce()
        self.refresh_from_db()
        return new

    def _edited_copy(self, old: Checkpoint, output: Any) -> Checkpoint:
        return Checkpoint.objects.create(
            run=self,
            position=old.position,
            name=old.name,
            status=CheckpointStatus.SUCCEEDED,
            output=output,
            attempts=old.attempts,
            epoch=old.epoch,
            started_at=old.started_at,
            finished_at=old.finished_at,
            edited_from=old,
            meta=old.meta,
        )

    def retry_now(self, by=None, reason: str = "") -> None:
        """Cut short a step's retry backoff: the next attempt starts now."""
        target = entry_status(self.workflow)
        check_transition([Status.WAITING], target)
        now = timezone.now()
        with transaction.atomic():
            backoff = Run.objects.filter(pk=self.pk, status=Status.WAITING, wait_kind=WaitKind.RETRY)
            due = backoff.values("wait_position", "wake_at").first() or {}
            woken = backoff.update(status=target, dispatched_at=now, updated_at=now)
            if not woken:
                self.refresh_from_db(fields=["status", "wait_kind"])
                raise InvalidOperation(
                    f"Cannot retry run {self.pk} now: it is {self.get_status_display()}"
                    + (f" ({self.get_wait_kind_display()})" if self.wait_kind else "")
                    + "; only a run backing off before its next attempt can."
                )
            details = {"position": due["wait_position"], "was_due": _jsonable(due["wake_at"])}
            AuditEntry.record(self, "retry now", by, reason=reason, details=details)
            self.status = target
            self.announce()
        self.refresh_from_db()

    # --- dashboard reading ---
    # Read-only helpers for the operator dashboard. None of them queries the
    # database: lists annotate what they need (see runs.views).

    def progress(self) -> int | None:
        """Percent of steps done, or None when the run's length cannot be estimated.

        Workflows decide their number of steps at run time, so the estimate is the
        step count of the workflow's latest successful run, which the run list
        annotates as `typical_steps`.
        """
        if self.status == Status.SUCCEEDED:
            return 100
        typical = self.__dict__.get("typical_steps")
        if not typical:
            return None
        # An unfinished run is never shown as complete, even past the typical length.
        return min(self.steps_done * 100 // typical, 99)

    def age(self):
        return timezone.now() - self.created_at

    def deployed_version(self) -> str | None:
        """The code version of this run's workflow as deployed here; None if it is not registered here."""
        from runs.workflow import UnknownWorkflow, registry

        try:
            return registry.get(self.workflow).version
        except UnknownWorkflow:
            return None

    def code_warning(self) -> str:
        """What an operator acting on this run must know about its code; "" when nothing.

        Said in every confirmation (dashboard, CLI, API): a resume or retry replays the
        recorded steps with the code deployed here, and the run then records its version.
        """
        deployed = self.deployed_version()
        if deployed is None:
            return f"Workflow {self.workflow!r} is not registered in the code deployed here."
        if not self.code_version or deployed == self.code_version:
            return ""
        return (
            f"The code changed since this run last ran: it ran version {self.code_version}, "
            f"the deployed code is version {deployed}. Its recorded steps are replayed with the "
            "deployed code, which may take a different path; the run will record the new version."
        )

    def pinned_elsewhere(self) -> bool:
        """Recorded under a declared workflow version other than the one deployed here."""
        from runs.workflow import pinned_elsewhere

        deployed = self.deployed_version()
        return deployed is not None and pinned_elsewhere(self.code_version, deployed)

    def asks(self, previous_output: Any = None) -> str:
        """What this run, waiting for a signal, asks a person, as plain text cut to ASKED_CHARS:
        the workflow's prompt when it gave one, else the "summary" the step before the wait put
        in its output (at the top, or under "data" as an LLM's JSON has it)."""
        if self.wait_prompt:
            return self.wait_prompt[:ASKED_CHARS]
        data = previous_output.get("data") if isinstance(previous_output, dict) else None
        for holder in (previous_output, data):
            if isinstance(holder, dict) and isinstance(holder.get("summary"), str):
                return holder["summary"][:ASKED_CHARS]
        return ""

    def queue_unserved(self, served: set[str] | None = None) -> bool:
        """Pending on a queue that no live worker has consumed for a minute: nobody will answer."""
        if self.status != Status.PENDING:
            return False
        served = WorkerProcess.served_queues() if served is None else served
        return served is not None and self.queue not in served

    @property
    def awaits_decision(self) -> bool:
        """Waiting for a signal: a person is expected to answer (the inbox)."""
        return self.status == Status.WAITING and self.wait_kind == WaitKind.SIGNAL

    @property
    def can_resume(self) -> bool:
        return self.status in (Status.FAILED, Status.DEAD)

    @property
    def can_retry(self) -> bool:
        return self.status in (Status.FAILED, Status.DEAD, Status.SUCCEEDED, Status.CANCELLED)

    @property
    def can_cancel(self) -> bool:
        return self.status in ACTIVE_STATUSES and not self.cancel_requested

    @property
    def can_terminate(self) -> bool:
        return self.status == Status.RUNNING and not self.terminate_requested

    @property
    def can_signal(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def can_edit(self) -> bool:
        return self.status in (Status.FAILED, Status.DEAD)

    @property
    def can_edit_and_continue(self) -> bool:
        return self.can_retry

    @property
    def can_retry_now(self) -> bool:
        return self.status == Status.WAITING and self.wait_kind == WaitKind.RETRY

    @property
    def key_prefix(self) -> str:
        return self.idempotency_key[:8]


# --- the per-step hot path -------------------------------------------------------
# Per step: a conditional UPDATE that advances the run under its lease, and the
# checkpoint's INSERT, committed together. They are plain SQL built once: compiling
# them through the ORM costs about a millisecond of Python per step, more than the
# database's own work. Values still go through each field's own adaptation
# (get_db_prep_save), so they are stored exactly as the ORM would store them.
# On PostgreSQL both are one statement (a data-modifying WITH), so a step costs one
# round trip and one commit.

ADVANCE_FIELDS = (
    "steps_done",
    "current_step",
    "updated_at",
    "wait_kind",
    "wait_signal",
    "wait_prompt",
    "wait_position",
    "wake_at",
    "lost_in_a_row",
)
CHECKPOINT_FIELDS = (
    "run_id",
    "position",
    "name",
    "status",
    "output",
    "error_type",
    "error_message",
    "error_traceback",
    "attempts",
    "epoch",
    "started_at",
    "finished_at",
    "meta",
    "input",
)
_statements: dict[str, tuple[str, str, str]] = {}


def _hot_statements() -> tuple[str, str, str]:
    vendor = connection.vendor
    if vendor not in _statements:
        quote = connection.ops.quote_name
        run_table, checkpoint_table = quote(Run._meta.db_table), quote(Checkpoint._meta.db_table)
        columns = [Run._meta.get_field(name).column for name in ADVANCE_FIELDS]
        update = (
            f"UPDATE {run_table} SET {', '.join(f'{quote(column)} = %s' for column in columns)} "
            f"WHERE {quote('id')} = %s AND {quote('status')} = %s AND {quote('lease_token')} = %s "
            f"AND {quote('cancel_requested')} = %s AND {quote('terminate_requested')} = %s"
        )
        insert_columns = [Checkpoint._meta.get_field(name).column for name in CHECKPOINT_FIELDS]
        column_list = ", ".join(quote(column) for column in insert_columns)
        placeholders = ", ".join(["%s"] * len(insert_columns))
        insert = f"INSERT INTO {checkpoint_table} ({column_list}) VALUES ({placeholders})"
        both = (
            f"WITH advanced AS ({update} RETURNING {quote('id')}) "
            f"INSERT INTO {checkpoint_table} ({column_list}) SELECT {placeholders} FROM advanced"
        )
        _statements[vendor] = (update, insert, both)
    return _statements[vendor]


def insert_with_audit(run: Run, entry: AuditEntry) -> Run:
    """Insert a new run and its audit entry in one statement (PostgreSQL, outside a transaction).

    Its own commit, one round trip: BEGIN, two INSERTs and COMMIT were four, and a start is
    what a client waits for before it can start the next run.
    """
    quote = connection.ops.quote_name
    run_fields = [field for field in Run._meta.concrete_fields if not field.primary_key]
    query = InsertQuery(Run)
    query.insert_values(run_fields, [run])
    [(insert_run, run_params)] = query.get_compiler(connection=connection).as_sql()
    entry_fields = [field for field in AuditEntry._meta.concrete_fields if field.name not in ("id", "run")]
    entry_values = [field.get_db_prep_save(field.pre_save(entry, True), connection) for field in entry_fields]
    columns = ", ".join(quote(field.column) for field in entry_fields)
    sql = (
        f"WITH new_run AS ({insert_run} RETURNING {quote('id')}) "
        f"INSERT INTO {quote(AuditEntry._meta.db_table)} ({quote('run_id')}, {columns}) "
        f"SELECT {quote('id')}, {', '.join(['%s'] * len(entry_fields))} FROM new_run "
        f"RETURNING {quote('run_id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*run_params, *entry_values])
        run.pk = cursor.fetchone()[0]
    run._state.adding, run._state.db = False, connection.alias
    return run


def _claim_statement() -> str:
    """Run.objects.claim's UPDATE, returning the whole claimed row (see RunQuerySet.claimed)."""
    vendor = connection.vendor
    if vendor not in _claim_statements:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in Run._meta.concrete_fields)
        _claim_statements[vendor] = (
            f"UPDATE {quote(Run._meta.db_table)} SET {quote('status')} = %s, {quote('lease_owner')} = %s, "
            f"{quote('lease_token')} = %s, {quote('claims')} = {quote('claims')} + 1, "
            f"{quote('started_at')} = COALESCE({quote('started_at')}, %s), {quote('updated_at')} = %s "
            f"WHERE {quote('id')} = %s AND {quote('status')} = %s RETURNING {columns}"
        )
    return _claim_statements[vendor]


_claim_statements: dict[str, str] = {}


def _prepared(model, values: dict) -> list:
    # The connection itself, not the thread-aware proxy `connection`: fields ask it for
    # its operations and features a few times each, and every ask through the proxy is a
    # context-local lookup (a third of a checkpoint's CPU time, measured).
    own = connections[connection.alias]
    return [model._meta.get_field(name).get_db_prep_save(value, own) for name, value in values.items()]


def _checkpoint_params(run_id: int, fields: dict) -> list:
    defaults = {
        "error_type": "",
        "error_message": "",
        "error_traceback": "",
        "attempts": 1,
        "meta": None,
        "input": None,
    }
    values = {"output": None, "epoch": 0, **defaults, **fields, "run_id": run_id}
    unknown = set(values) - set(CHECKPOINT_FIELDS)
    if unknown:
        raise TypeError(f"unknown checkpoint fields {sorted(unknown)}")
    return _prepared(Checkpoint, {name: values[name] for name in CHECKPOINT_FIELDS})


def edited_output(output: Any) -> Any:
    """An operator's replacement for a step's output, as JSON; InvalidOperation if it is not."""
    try:
        return ensure_json(output, "checkpoint output")
    except ValueError as exc:
        raise InvalidOperation(str(exc)) from None


def advance_and_checkpoint(run_id: int, token: str, advance: dict, fields: dict) -> bool:
    """Advance a run held under `token` and insert its checkpoint, atomically.

    False, with nothing written, when the lease is gone or an operator asked the run to stop.
    """
    update, insert, both = _hot_statements()
    lease = [run_id, Status.RUNNING.value, token, False, False]
    advance_params = [*_prepared(Run, {name: advance[name] for name in ADVANCE_FIELDS}), *lease]
    checkpoint_params = _checkpoint_params(run_id, fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(both, [*advance_params, *checkpoint_params])
            return cursor.rowcount == 1
        with transaction.atomic():
            cursor.execute(update, advance_params)
            if cursor.rowcount != 1:
                return False
            cursor.execute(insert, checkpoint_params)
            return True


def insert_checkpoint(run_id: int, fields: dict) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_hot_statements()[1], _checkpoint_params(run_id, fields))


# --- batch wake-ups ----------------------------------------------------------------
# The sweep wakes runs a thousand at a time. The ORM's update() cannot say which rows
# it changed, and the woken runs' queues and workflows are needed to ring their
# doorbells, so the UPDATE is written here, with RETURNING, around the candidate query
# the ORM compiles (FOR NO KEY UPDATE SKIP LOCKED on PostgreSQL). docs/benchmarks.md records
# what it bought over one conditional UPDATE per run.

# The wake-up sources that wait for an event rather than a time (see wake_arrived).
ARRIVALS = ("signalled_while_waiting", "waiting_on_finished_children", "waiting_on_finished_branches")
_arrival_statements: dict[tuple, tuple[str, list, list]] = {}
WOKEN_COLUMNS = ("id", "queue", "workflow", "status")


def _update_can_return() -> bool:
    # SQLite gained RETURNING for INSERT, UPDATE and DELETE at once (3.35), so Django's
    # flag for INSERT answers for UPDATE too; PostgreSQL always had it.
    return connection.features.can_return_columns_from_insert


def _limited_workflows() -> list[str]:
    """Workflows with a concurrency limit: their runs re-enter the line queued."""
    from runs.workflow import registry

    names = set(registry.names()) | set(settings.DURABLE_CONCURRENCY)
    return sorted(name for name in names if concurrency_limit(name) is not None)


def _candidates(query: RunQuerySet) -> RunQuerySet:
    waiting = query.filter(status=Status.WAITING)
    if connection.features.has_select_for_update_skip_locked:
        # NO KEY: rows being inserted elsewhere that point at the run (a signal, a
        # checkpoint) take a KEY SHARE lock on it; they neither wait for nor hide it.
        no_key = connection.features.has_select_for_no_key_update
        waiting = waiting.select_for_update(skip_locked=True, no_key=no_key)
    return waiting


def _wake_update(where: str) -> tuple[str, list]:
    """UPDATE … SET the entry status and time stamps WHERE `where` AND still waiting.

    Parameters: those returned, the two time stamps, those of `where`, "waiting".
    """
    check_transition([Status.WAITING], Status.PENDING)
    check_transition([Status.WAITING], Status.QUEUED)
    quote = connection.ops.quote_name
    limited = _limited_workflows()
    if limited:
        marks = ", ".join(["%s"] * len(limited))
        target = f"CASE WHEN {quote('workflow')} IN ({marks}) THEN %s ELSE %s END"
        target_params = [*limited, Status.QUEUED.value, Status.PENDING.value]
    else:
        target, target_params = "%s", [Status.PENDING.value]
    sql = (
        f"UPDATE {quote(Run._meta.db_table)} SET {quote('status')} = {target}, "
        f"{quote('dispatched_at')} = %s, {quote('updated_at')} = %s "
        f"WHERE {where} AND {quote('status')} = %s"
    )
    return sql, target_params


def _wake_statement(query: RunQuerySet, limit: int) -> tuple[str, list, list]:
    """The UPDATE … RETURNING that wakes up to `limit` of `query`'s runs, in its order.

    Returns the SQL and the parameters before and after the two time stamps.
    """
    quote = connection.ops.quote_name
    candidates = _candidates(query).values("pk")[:limit]
    select, select_params = candidates.query.get_compiler(connection=connection).as_sql()
    if connection.vendor == "postgresql":
        # ARRAY(…) is computed once, before the update. Under IN (…) the planner may
        # rescan the subquery for every row it joins, and each rescan locks and
        # returns more rows: a batch of 2 woke 4.
        where = f"{quote('id')} = ANY(ARRAY({select}))"
    else:
        where = f"{quote('id')} IN ({select})"  # SQLite computes an uncorrelated IN list once
    update, target_params = _wake_update(where)
    returning = ", ".join(quote(column) for column in WOKEN_COLUMNS)
    return f"{update} RETURNING {returning}", target_params, [*select_params, Status.WAITING.value]


def _wake(statement: tuple[str, list, list]) -> list[int]:
    sql, before, after = statement
    now = timezone.now()
    stamps = _prepared(Run, {"dispatched_at": now, "updated_at": now})
    with connection.cursor() as cursor:
        cursor.execute(sql, [*before, *stamps, *after])
        rows = cursor.fetchall()
    _announce_woken(rows)
    return [row[0] for row in rows]


def _wake_then_read(candidates) -> list[int]:
    """Without RETURNING (SQLite before 3.35): read the batch, then wake it by id.

    The transaction holds SQLite's write lock from its start, so every run read is
    still waiting; should the row count say otherwise, the runs this UPDATE stamped
    are read back.
    """
    rows = list(candidates)
    if not rows:
        return []
    ids = [pk for pk, *_ in rows]
    update, target_params = _wake_update(
        f"{connection.ops.quote_name('id')} IN ({', '.join(['%s'] * len(ids))})"
    )
    now = timezone.now()
    stamps = _prepared(Run, {"dispatched_at": now, "updated_at": now})
    with connection.cursor() as cursor:
        cursor.execute(update, [*target_params, *stamps, *ids, Status.WAITING.value])
        woken = cursor.rowcount
    if woken == len(rows):
        woken_rows = [(pk, queue, workflow, entry_status(workflow)) for pk, queue, workflow in rows]
    else:
        stamped = Run.objects.filter(
            pk__in=ids, dispatched_at=now, status__in=[Status.PENDING, Status.QUEUED]
        )
        woken_rows = list(stamped.values_list(*WOKEN_COLUMNS))
    _announce_woken(woken_rows)
    return [row[0] for row in woken_rows]


def _announce_woken(rows) -> None:
    """After the commit: ring each pending run's doorbell, admit each queued workflow's line."""
    pending = [(pk, queue) for pk, queue, _, status in rows if status == Status.PENDING]
    if pending:
        transaction.on_commit(lambda: _ring_all(pending))
    for workflow in sorted({workflow for _, _, workflow, status in rows if status == Status.QUEUED}):
        transaction.on_commit(lambda workflow=workflow: Run.objects.admit(workflow))


def _ring_all(pending: list[tuple[int, str]]) -> None:
    for run_id, queue in pending:
        dispatch.ring(run_id, queue)


class Signal(models.Model):
    """A message for a run; consumed by the first wait_for_signal of that name."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="signals")
    name = models.CharField(max_length=200)
    payload = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    sent_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    consumed_at = models.DateTimeField(null=True, blank=True)
    consumed_position = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # wait_for_signal: the oldest unconsumed signal of a name for a run.
            models.Index(fields=["run", "name", "consumed_at"], name="signal_lookup"),
            # Sweep: signalled_while_waiting starts from the signals not consumed yet, a
            # few rows however many signals were ever sent.
            models.Index(
                fields=["run", "name"], condition=Q(consumed_at__isnull=True), name="signal_unconsumed"
            ),
        ]

    def __str__(self) -> str:
        return f"signal {self.name} for run {self.run_id}"

    def consume(self, position: int) -> bool:
        return (
            Signal.objects.filter(pk=self.pk, consumed_at__isnull=True).update(
                consumed_at=timezone.now(), consumed_position=position
            )
            == 1
        )


class AuditEntry(models.Model):
    """Who did what to which run, and why. Written by every operator action."""

    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=200)
    action = models.CharField(max_length=50)
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True, decoder=StoredJSONDecoder)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            # Run page: that run's audit log, newest first.
            models.Index(fields=["run", "-id"], name="audit_run"),
            # Overview and metrics: recoveries (action "recover") over a time window.
            models.Index(fields=["action", "created_at"], name="audit_action_time"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} run {self.run_id}"

    @classmethod
    def record(cls, run: Run | None, action: str, by, reason: str = "", details: dict | None = None):
        entry = cls.build(run, action, by, reason, details)
        entry.save(force_insert=True)
        return entry

    @classmethod
    def build(cls, run: Run | None, action: str, by, reason: str = "", details: dict | None = None):
        """The entry, not saved yet."""
        # Raised inside the operation's transaction, so a refused reason changes nothing.
        ensure_text(reason or "", "reason")
        user = None if by is None or isinstance(by, str) else by
        return cls(
            run=run,
            actor=user,
            actor_name=actor_label(by),
            action=action,
            reason=reason or "",
            details=details or {},
        )


def hour_text(field: str):
    """The hour of a timestamp as text ("2025-01-31 17", UTC), native on SQLite and
    PostgreSQL alike (TruncHour calls Python for every row on SQLite)."""
    return Substr(Cast(field, models.CharField()), 1, 13)


class OutcomeHour(models.Model):
    """Runs started in one past hour, counted by their status now: the overview's chart.

    Counting a day of runs reads every one of them (half a second at a million runs).
    A past hour is counted once, then again only when one of its runs changed since
    it was last checked (read through the index on updated_at), so the overview reads
    24 small rows and a few changed runs. The current hour is always counted afresh.
    """

    hour = models.DateTimeField(unique=True)
    counts = models.JSONField(default=dict)
    checked_at = models.DateTimeField()

    # A run's updated_at is set before its transaction commits; a change committed up to
    # this long after it was stamped (the database ends longer idle transactions) is
    # still seen by the next check.
    COMMIT_MARGIN = timedelta(minutes=2)

    def __str__(self) -> str:
        return f"runs started at {self.hour:%Y-%m-%d %H}:00 UTC: {self.counts}"

    @staticmethod
    def count(start, end=None) -> dict[str, int]:
        rows = Run.objects.filter(created_at__gte=start).values("status")
        if end is not None:
            rows = rows.filter(created_at__lt=end)
        return {row["status"]: row["n"] for row in rows.annotate(n=models.Count("pk")).order_by()}

    @classmethod
    def last_day(cls, first_hour) -> list[dict[str, Any]]:
        """The 24 hours from first_hour (whole UTC hours, the last one the current), each
        {"hour": start, status: count, ...}."""
        hours = [first_hour + timedelta(hours=index) for index in range(24)]
        current = hours[-1]
        past = hours[:-1]
        checked = timezone.now()  # before reading: what changes later is seen next time
        stored = {row.hour: row for row in cls.objects.filter(hour__in=past)}
        stale = {hour for hour in past if hour not in stored}
        if stored:
            since = min(row.checked_at for row in stored.values()) - cls.COMMIT_MARGIN
            changed = (
                Run.objects.filter(updated_at__gte=since, created_at__gte=first_hour, created_at__lt=current)
                .values_list(hour_text("created_at"), flat=True)
                .distinct()
                .order_by()
            )
            stale |= {datetime.strptime(text, "%Y-%m-%d %H").replace(tzinfo=UTC) for text in changed}
        counts = {hour: row.counts for hour, row in stored.items()}
        counts.update({hour: cls.count(hour, hour + timedelta(hours=1)) for hour in stale})
        cls.objects.bulk_create(
            [cls(hour=hour, counts=counts[hour], checked_at=checked) for hour in stale],
            update_conflicts=True,
            unique_fields=["hour"],
            update_fields=["counts", "checked_at"],
        )
        cls.objects.filter(hour__in=past).exclude(hour__in=stale).update(checked_at=checked)
        cls.objects.filter(hour__lt=first_hour).delete()  # out of the window for good
        counts[current] = cls.count(current)
        return [{"hour": hour, **counts[hour]} for hour in hours]


class ViewerPreference(models.Model):
    """A person's own settings for the dashboard. An empty time zone: the browser's."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="viewer_preference"
    )
    time_zone = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        zone = self.time_zone or "the browser's time zone"
        return f"{self.user}: {zone}"

    @classmethod
    def time_zone_of(cls, user) -> str:
        return cls.objects.filter(user=user).values_list("time_zone", flat=True).first() or ""


class WorkerProcess(models.Model):
    """A process that executes runs. Its heartbeat keeps the leases it holds alive."""

    name = models.CharField(max_length=200, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    # The queues a worker's main process consumes; empty for its pool processes.
    queues = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name_plural = "worker processes"
        indexes = [
            # Sweep: which processes are still alive.
            models.Index(fields=["heartbeat_at"], name="worker_heartbeat"),
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def beat(cls, name: str, hostname: str, pid: int, queues: list[str] | None = None) -> None:
        now = timezone.now()
        if not cls.objects.filter(name=name).update(heartbeat_at=now):
            cls.objects.update_or_create(
                name=name,
                defaults={"hostname": hostname, "pid": pid, "heartbeat_at": now, "queues": queues or []},
            )

    @classmethod
    def alive_names(cls):
        """The names of the processes that have beaten within the lease timeout (a subquery)."""
        cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
        return cls.objects.filter(heartbeat_at__gte=cutoff).values("name")

    @classmethod
    def served_queues(cls, within: float = 60.0) -> set[str] | None:
        """Queues a worker has consumed in the last `within` seconds; None if none says."""
        recent = cls.objects.filter(heartbeat_at__gte=timezone.now() - timedelta(seconds=within))
        listed = [queues for queues in recent.values_list("queues", flat=True) if queues]
        return {queue for queues in listed for queue in queues} if listed else None


class ReplayCheck(models.Model):
    """The outcome of one `runs check`: in-flight runs replayed against a checkout's code.

    Kept so the dashboard can show the last one; never changes a run.
    """

    started_at = models.DateTimeField()
    seconds = models.FloatField()
    checked_by = models.CharField(max_length=200, blank=True)
    # The selection the check was asked for: statuses, workflows, run ids.
    selection = models.JSONField(default=dict, blank=True, decoder=StoredJSONDecoder)
    runs = models.PositiveIntegerField()
    unsafe = models.PositiveIntegerField()
    # Per workflow: counts, code versions and the first findings (runs.replaycheck).
    workflows = models.JSONField(default=dict, blank=True, decoder=StoredJSONDecoder)

    class Meta:
        ordering = ["-started_at", "-id"]
        get_latest_by = ["started_at", "id"]

    def __str__(self) -> str:
        return f"check of {self.runs} runs at {self.started_at:%Y-%m-%d %H:%M}: {self.unsafe} unsafe"

    @property
    def ok(self) -> bool:
        return self.unsafe == 0

    def workflow_rows(self) -> list[dict]:
        """Per workflow, for the page: tolerant of any shape the stored JSON has (never fails)."""
        rows = []
        stored = self.workflows if isinstance(self.workflows, dict) else {}
        for name in sorted(stored, key=str):
            found = stored[name] if isinstance(stored[name], dict) else {}
            findings = found.get("findings")
            outcomes = found.get("outcomes")
            rows.append(
                {
                    "workflow": str(name),
                    "runs": found.get("runs", 0),
                    "clean": found.get("clean", 0),
                    "unsafe": found.get("unsafe", 0),
                    "outcomes": sorted(outcomes.items()) if isinstance(outcomes, dict) else [],
                    "current_version": found.get("current_version") or "",
                    "findings": [f for f in findings if isinstance(f, dict)]
                    if isinstance(findings, list)
                    else [],
                }
            )
        return rows

    @classmethod
    def keep(cls, report, *, by: str, selection: dict) -> ReplayCheck:
        return cls.objects.create(
            started_at=report.started_at,
            seconds=report.seconds,
            checked_by=by,
            selection=selection,
            runs=report.runs,
            unsafe=report.unsafe,
            workflows=report.as_json(),
        )
