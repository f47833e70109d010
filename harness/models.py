"""Tables the harness workflows write to, standing in for external systems."""

from django.db import models


class Call(models.Model):
    """Every call a harness step made to the 'external system', retries and re-executions included."""

    idempotency_key = models.CharField(max_length=200)
    run_id = models.BigIntegerField()
    position = models.PositiveIntegerField()
    attempt = models.PositiveIntegerField()
    step = models.CharField(max_length=200, default="")  # the step's name
    started_at = models.FloatField()  # time.time(): compared with kill times across processes
    pid = models.PositiveIntegerField()

    class Meta:
        indexes = [
            # Recovery latency: a run's calls after a kill.
            models.Index(fields=["run_id", "started_at"], name="harness_call_run"),
        ]

    def __str__(self) -> str:
        return f"call {self.idempotency_key} attempt {self.attempt}"


class SideEffect(models.Model):
    """An effect the external system applied; like a payment provider it applies a key once."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    run_id = models.BigIntegerField()
    position = models.PositiveIntegerField()
    value = models.IntegerField()

    class Meta:
        indexes = [
            # Check: one effect per (run, position), whatever the key.
            models.Index(fields=["run_id", "position"], name="harness_effect_run"),
        ]

    def __str__(self) -> str:
        return f"effect {self.idempotency_key}"


class FloorRow(models.Model):
    """One-row INSERT+COMMIT loop: the database's own floor for the benchmark."""

    value = models.IntegerField()

    def __str__(self) -> str:
        return str(self.value)
