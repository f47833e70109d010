"""Per-step history of a run: checkpoints (one per position) and failed attempts.

Rows here are written once. An operator's retry-from-step or edit marks
checkpoints superseded (``superseded_at``) and keeps them; nothing is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from runs.jsoninput import StoredJSONDecoder


class CheckpointStatus(models.TextChoices):
    SUCCEEDED = "succeeded", "succeeded"  # the step returned; output holds its value
    FAILED = "failed", "failed"  # retries exhausted or non-retryable; replay re-raises it


class CheckpointQuerySet(models.QuerySet):
    def live(self):
        return self.filter(superseded_at__isnull=True)

    def supersede_from(self, run, position: int) -> int:
        return self.filter(run=run, position__gte=position, superseded_at__isnull=True).update(
            superseded_at=timezone.now()
        )


class Checkpoint(models.Model):
    """The recorded outcome of the step at one position of a run."""

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="checkpoints")
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=CheckpointStatus.choices)
    output = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    # What the step was called with (runs.stepinputs.record); null for markers, waits
    # and checkpoints written before inputs were recorded.
    input = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    error_type = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    # The run's epoch when the step executed; part of its idempotency key.
    epoch = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    superseded_at = models.DateTimeField(null=True, blank=True)
    # Set when an operator replaced an earlier checkpoint's output.
    edited_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="edits"
    )
    # Free-form facts about the call (LLM tokens, cost, model...), shown on the run page.
    meta = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        ordering = ["run", "position", "id"]
        constraints = [
            # Invariant: a position never has two live checkpoints.
            models.UniqueConstraint(
                fields=["run", "position"],
                condition=Q(superseded_at__isnull=True),
                name="one_live_checkpoint_per_position",
            ),
        ]
        indexes = [
            # Overview: step durations by step name over a time window.
            models.Index(fields=["finished_at"], name="checkpoint_finished_at"),
        ]
        # Replay reads a run's live checkpoints through the unique index above, and the
        # run page all of them through the foreign key's index on run_id. A third index
        # on (run, position) would cost each checkpoint ~28 bytes for nothing.

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.position} {self.name} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.superseded_at is None

    @property
    def duration(self):
        return self.finished_at - self.started_at


class AttemptQuerySet(models.QuerySet):
    def live(self):
        return self.filter(superseded_at__isnull=True)

    def supersede_from(self, run, position: int) -> int:
        return self.filter(run=run, position__gte=position, superseded_at__isnull=True).update(
            superseded_at=timezone.now()
        )


class Attempt(models.Model):
    """A failed attempt at a step. The successful final attempt is the checkpoint itself."""

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="attempts")
    position = models.PositiveIntegerField()
    # Set for an attempt at one call of a parallel group (see Branch.index).
    branch = models.PositiveIntegerField(null=True, blank=True)
    name = models.CharField(max_length=200)
    number = models.PositiveSmallIntegerField()
    # The step's retry policy's limit when it failed ("attempt 2 of 5"); unknown for
    # attempts recorded before it was kept, and for attempts interrupted from outside.
    max_attempts = models.PositiveSmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    error_type = models.CharField(max_length=200)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    objects = AttemptQuerySet.as_manager()

    class Meta:
        ordering = ["run", "position", "number", "id"]
        indexes = [
            # Attempt budget on resume and the run page: a run's attempts by position.
            models.Index(fields=["run", "position"], name="attempt_run_position"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.position} attempt {self.number}: {self.error_type}"

    @property
    def duration(self):
        return self.finished_at - self.started_at


@dataclass(frozen=True)
class AttemptGroup:
    """The attempts at one position made between two operator recoveries, numbered from 1."""

    label: str
    attempts: list
    current: bool


def group_attempts(attempts) -> list[AttemptGroup]:
    """Split a position's attempts (in order) by the resume or retry that superseded them.

    Each recovery supersedes the attempts before it at one moment, and the next attempts
    are numbered from 1 again; so the groups are "before resume #1", "before resume #2"…,
    then the live ones, each with its own numbering.
    """
    earlier: dict = {}
    live = []
    for attempt in attempts:
        if attempt.superseded_at is None:
            live.append(attempt)
        else:
            earlier.setdefault(attempt.superseded_at, []).append(attempt)
    groups = [
        AttemptGroup(f"before resume #{index}", group, False)
        for index, (_, group) in enumerate(sorted(earlier.items(), key=lambda item: item[0]), start=1)
    ]
    if live:
        label = f"since resume #{len(groups)}" if groups else "attempts"
        groups.append(AttemptGroup(label, live, True))
    return groups


class BranchStatus(models.TextChoices):
    PENDING = "pending", "pending"  # dispatched; waiting for a worker to claim it
    RUNNING = "running", "running"  # a worker holds its lease
    WAITING = "waiting", "waiting"  # backing off before a retry, or held by a rate limit
    SUCCEEDED = "succeeded", "succeeded"  # output recorded
    FAILED = "failed", "failed"  # failed for good; the group fails, this error is its error


BRANCH_UNFINISHED = (BranchStatus.PENDING, BranchStatus.RUNNING, BranchStatus.WAITING)


class BranchQuerySet(models.QuerySet):
    def live(self):
        return self.filter(superseded_at__isnull=True)

    def supersede_from(self, run, position: int, statuses=None) -> int:
        rows = self.filter(run=run, position__gte=position, superseded_at__isnull=True)
        if statuses is not None:
            rows = rows.filter(status__in=statuses)
        return rows.update(superseded_at=timezone.now())


class Branch(models.Model):
    """One call of a parallel group: the group holds position `position` of the run,
    and its calls are numbered by `index` in call order, whatever order they finish in.

    Each branch is executed by its own Celery task on any worker and checkpointed here.
    """

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="branches")
    position = models.PositiveIntegerField()
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    # Where the step function lives ("module:qualname"), so any worker can import it.
    target = models.CharField(max_length=300)
    args = models.JSONField(default=list, decoder=StoredJSONDecoder)
    kwargs = models.JSONField(default=dict, decoder=StoredJSONDecoder)
    status = models.CharField(max_length=10, choices=BranchStatus.choices, default=BranchStatus.PENDING)
    output = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    error_type = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    epoch = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_token = models.CharField(max_length=64, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)
    recovery_count = models.PositiveIntegerField(default=0)
    meta = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)

    objects = BranchQuerySet.as_manager()

    class Meta:
        ordering = ["run", "position", "index", "id"]
        verbose_name_plural = "branches"
        constraints = [
            models.UniqueConstraint(
                fields=["run", "position", "index"],
                condition=Q(superseded_at__isnull=True),
                name="one_live_branch_per_index",
            ),
        ]
        indexes = [
            # Sweep: orphaned, due and unanswered branches.
            models.Index(fields=["status", "wake_at"], name="branch_status_wake"),
            models.Index(fields=["status", "dispatched_at"], name="branch_status_dispatched"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.position}.{self.index} {self.name} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (BranchStatus.SUCCEEDED, BranchStatus.FAILED)

    # --- the worker's writes: conditional on status and lease token -------------------

    @classmethod
    def claim(cls, pk: int, owner: str, token: str, run_statuses) -> bool:
        """Take a pending branch whose run is still going; a duplicate doorbell claims nothing."""
        now = timezone.now()
        return (
            cls.objects.filter(pk=pk, status=BranchStatus.PENDING, run__status__in=run_statuses).update(
                status=BranchStatus.RUNNING,
                lease_owner=owner,
                lease_token=token,
                started_at=Coalesce(F("started_at"), Value(now)),
                wake_at=None,
            )
            == 1
        )

    def _leased(self, token: str):
        return Branch.objects.filter(pk=self.pk, status=BranchStatus.RUNNING, lease_token=token)

    def succeed(self, token: str, output, meta: dict | None) -> bool:
        return bool(
            self._leased(token).update(
                status=BranchStatus.SUCCEEDED,
                output=output,
                meta=meta,
                attempts=F("attempts") + 1,
                finished_at=timezone.now(),
                lease_owner="",
                lease_token="",
            )
        )

    def fail(self, token: str, attempt: dict, retry_at=None) -> bool:
        """Record a failed attempt: back off until retry_at, or fail for good without one."""
        with transaction.atomic():
            if retry_at is not None:
                fields = dict(status=BranchStatus.WAITING, wake_at=retry_at)
            else:
                fields = dict(
                    status=BranchStatus.FAILED,
                    finished_at=attempt["finished_at"],
                    error_type=attempt["error_type"],
                    error_message=attempt["error_message"],
                    error_traceback=attempt["error_traceback"],
                )
            updated = self._leased(token).update(
                **fields, attempts=F("attempts") + 1, lease_owner="", lease_token=""
            )
            if updated:
                Attempt.objects.create(run_id=self.run_id, branch=self.index, **attempt)
        return bool(updated)

    def hold(self, token: str, until) -> bool:
        """Wait for a rate limit: released, and not counted as an attempt."""
        return bool(
            self._leased(token).update(
                status=BranchStatus.WAITING, wake_at=until, lease_owner="", lease_token=""
            )
        )

    @classmethod
    def give_back(cls, pk: int, token: str) -> bool:
        """The holder could not go on (a database error): dispatch the branch again, uncounted."""
        from runs import dispatch

        with transaction.atomic():
            branch = cls.objects.filter(pk=pk, status=BranchStatus.RUNNING, lease_token=token)
            queue = branch.values_list("run__queue", flat=True).first()
            given = branch.update(
                status=BranchStatus.PENDING, lease_owner="", lease_token="", dispatched_at=timezone.now()
            )
            if given:
                dispatch.ring_branch_on_commit(pk, queue)
        return bool(given)

    def recover(self, max_recoveries: int) -> str | None:
        """Take the branch back from a lost worker, or fail it once that happened too often."""
        from runs.flow import maintenance, skip_locked

        now = timezone.now()
        lost_too_often = Q(recovery_count__gte=max_recoveries)
        with maintenance():
            held = Branch.objects.filter(
                pk=self.pk, status=BranchStatus.RUNNING, lease_token=self.lease_token
            )
            if not skip_locked(held).values_list("pk", flat=True):
                return None
            updated = self._take_back(held, lost_too_often, max_recoveries, now)
        if not updated:
            return None
        return Branch.objects.values_list("status", flat=True).get(pk=self.pk)

    @staticmethod
    def _take_back(held, lost_too_often, max_recoveries: int, now) -> int:
        return held.update(
            status=Case(
                When(lost_too_often, then=Value(BranchStatus.FAILED)), default=Value(BranchStatus.PENDING)
            ),
            error_type=Case(When(lost_too_often, then=Value("WorkerLost")), default=F("error_type")),
            error_message=Case(
                When(lost_too_often, then=Value(f"worker lost {max_recoveries + 1} times")),
                default=F("error_message"),
                output_field=models.TextField(),
            ),
            finished_at=Case(
                When(lost_too_often, then=Value(now)), default=None, output_field=models.DateTimeField()
            ),
            recovery_count=F("recovery_count") + 1,
            lease_owner="",
            lease_token="",
            dispatched_at=now,
        )

    def wake(self) -> bool:
        return bool(
            Branch.objects.filter(pk=self.pk, status=BranchStatus.WAITING).update(
                status=BranchStatus.PENDING, wake_at=None, dispatched_at=timezone.now()
            )
        )

    def redispatch(self) -> bool:
        return bool(
            Branch.objects.filter(
                pk=self.pk, status=BranchStatus.PENDING, dispatched_at=self.dispatched_at
            ).update(dispatched_at=timezone.now())
        )


class RateLimitGrant(models.Model):
    """One call admitted under a shared rate limit (a sliding-window log)."""

    key = models.CharField(max_length=200)
    granted_at = models.DateTimeField()

    class Meta:
        indexes = [
            # Admission: grants of a key inside the current window.
            models.Index(fields=["key", "granted_at"], name="ratelimit_window"),
        ]

    def __str__(self) -> str:
        return f"{self.key} at {self.granted_at}"
