"""Per-step history of a run: checkpoints (one per position) and failed attempts.

Rows here are written once. An operator's retry-from-step or edit marks
checkpoints superseded (``superseded_at``) and keeps them; nothing is deleted.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


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
    output = models.JSONField(null=True, blank=True)
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
    meta = models.JSONField(null=True, blank=True)

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
            # Run page and replay: a run's checkpoints in position order.
            models.Index(fields=["run", "position"], name="checkpoint_run_position"),
            # Overview: step durations by step name over a time window.
            models.Index(fields=["finished_at"], name="checkpoint_finished_at"),
        ]

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
    name = models.CharField(max_length=200)
    number = models.PositiveSmallIntegerField()
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
