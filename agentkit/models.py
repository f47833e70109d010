"""What agents leave behind: model calls, demo orders, the payment simulator's ledger.

Rows that stand for a side effect in the outside world (a payment, a note, a
notification) are keyed by the idempotency key of the step that caused them, with
a unique constraint: a step executed twice (a retry after a lost reply, a crash
after the call) finds its earlier row instead of causing the effect again.
"""

from __future__ import annotations

from array import array
from datetime import datetime, timedelta

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from runs.models import Run
from runs.redaction import redact


class ProviderCall(models.Model):
    """One request to a model provider, successful or not: what was spent.

    Written by the process that made the call, outside the step's checkpoint, so a
    call whose step never got checkpointed (a crash) is still counted: this table
    is what the provider will bill, the checkpoint is what the run remembers.

    Billing outlives runs: pruning a run clears `run` and keeps the row, which
    carries what reports need without the run (its workflow, provider, model,
    tokens, cost, time). Calls are pruned on their own schedule (agentkit.retention).
    """

    run = models.ForeignKey(
        "runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="provider_calls"
    )
    # The run's workflow, copied when the call is recorded; "" for a call outside a run.
    workflow = models.CharField(max_length=200, blank=True, default="")
    position = models.PositiveIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    idempotency_key = models.CharField(max_length=100, blank=True)
    provider = models.CharField(max_length=40)
    model = models.CharField(max_length=100)
    # "ok", or the error type that ended the call (RateLimited, ProviderTimeout...).
    outcome = models.CharField(max_length=100, default="ok")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    latency_ms = models.PositiveIntegerField(default=0)
    pid = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            # Run list and run page: token and cost totals for a page of run ids; the
            # prune's "clear the link of these runs' calls".
            models.Index(fields=["run", "position"], name="providercall_run"),
            # Overview: cost per workflow over the last 24 hours; billing retention.
            models.Index(fields=["created_at"], name="providercall_created"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} for run {self.run_id} step {self.position}: {self.outcome}"

    def save(self, *args, **kwargs) -> None:
        # What a provider answered is stored without the secrets it may echo (runs.redaction).
        self.model, self.outcome = redact(self.model), redact(self.outcome)
        if self.run_id is not None and not self.workflow:
            self.workflow = self.workflow_of_run()
        super().save(*args, **kwargs)

    def workflow_of_run(self) -> str:
        if ProviderCall.run.is_cached(self):
            return self.run.workflow
        # One primary-key lookup, for a call that took the provider seconds.
        return Run.objects.filter(pk=self.run_id).values_list("workflow", flat=True).first() or ""


class UsageHour(models.Model):
    """Model usage of one workflow over one past hour: what the overview adds up.

    A call is recorded when it is made, so once an hour has ended (and SETTLE has passed
    for calls stamped just before its end to commit) its figures never change: each hour
    is summed once and read ever after, instead of a day of calls per overview. The runs
    that made the calls are kept as their ids (8 bytes each, the calls of a pruned run
    keep theirs), so the distinct runs of a day are the exact union of its hours.
    """

    hour = models.DateTimeField()
    workflow = models.CharField(max_length=200)
    calls = models.BigIntegerField(default=0)
    failed_calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    latency_ms = models.BigIntegerField(default=0)
    run_ids = models.BinaryField(default=bytes)  # sorted int64s, array("q")

    SETTLE = timedelta(minutes=2)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "workflow"], name="usagehour_unique")]
        indexes = [models.Index(fields=["hour"], name="usagehour_hour")]

    def __str__(self) -> str:
        return f"{self.workflow} at {self.hour:%Y-%m-%d %H}:00 UTC: {self.calls} calls"

    @property
    def runs(self) -> set[int]:
        ids = array("q")
        ids.frombytes(bytes(self.run_ids))
        return set(ids)

    @classmethod
    def between(cls, first: datetime, end: datetime) -> list[UsageHour]:
        """The hours from `first` to `end` (whole hours, all ended), each summed once."""
        hours = [first + timedelta(hours=index) for index in range(int((end - first) / timedelta(hours=1)))]
        stored = list(cls.objects.filter(hour__in=hours))
        missing = set(hours) - {row.hour for row in stored}
        for hour in sorted(missing):
            added = [
                cls(hour=hour, workflow=workflow, run_ids=array("q", sorted(runs)).tobytes(), **usage)
                for workflow, (usage, runs) in usage_by_workflow(hour, hour + timedelta(hours=1)).items()
            ] or [cls(hour=hour, workflow=NO_CALLS)]
            # Two overviews may sum the same hour at once: the figures are the same.
            cls.objects.bulk_create(added, ignore_conflicts=True)
            stored += added
        if missing:  # an hour ended since the last look: the oldest ones are out of any window for good
            cls.objects.filter(hour__lt=first - timedelta(days=1)).delete()
        return [row for row in stored if row.workflow != NO_CALLS]


# The row of an hour without a call in a workflow: says that hour was summed.
NO_CALLS = ""


def usage_by_workflow(start: datetime, end: datetime | None = None) -> dict[str, tuple[dict, set[int]]]:
    """Per workflow, the summed figures of the calls made from start (to end), and the ids
    of the runs that made them. Two queries."""
    calls = ProviderCall.objects.filter(created_at__gte=start).exclude(workflow="")
    if end is not None:
        calls = calls.filter(created_at__lt=end)
    figures = (
        calls.values("workflow")
        .order_by()
        .annotate(
            calls=models.Count("id"),
            failed_calls=models.Count("id", filter=~models.Q(outcome="ok")),
            input_tokens=models.Sum("input_tokens"),
            output_tokens=models.Sum("output_tokens"),
            cost_usd=models.Sum("cost_usd"),
            latency_ms=models.Sum("latency_ms"),
        )
    )
    found = {
        row.pop("workflow"): ({name: value or 0 for name, value in row.items()}, set()) for row in figures
    }
    pairs = calls.filter(run__isnull=False).values_list("workflow", "run_id").distinct().order_by()
    for workflow, run_id in pairs:
        if workflow in found:
            found[workflow][1].add(run_id)
    return found


class OrderStatus(models.TextChoices):
    PAID = "paid", "paid"  # the customer paid; nothing refunded yet
    REFUNDED = "refunded", "refunded"  # the refund was issued and recorded


class Order(models.Model):
    """A shop order the demo agents look up and refund."""

    number = models.CharField(max_length=20, unique=True)
    customer = models.CharField(max_length=200)
    email = models.CharField(max_length=200, blank=True)
    item = models.CharField(max_length=200)
    total_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=OrderStatus.choices, default=OrderStatus.PAID)
    refunded_cents = models.PositiveIntegerField(default=0)
    refund_reference = models.CharField(max_length=100, blank=True)
    # Fault injection: the payment gateway times out for this order until then.
    gateway_down_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"order {self.number} ({self.status})"

    def as_dict(self) -> dict:
        return {
            "number": self.number,
            "customer": self.customer,
            "email": self.email,
            "item": self.item,
            "total_cents": self.total_cents,
            "status": self.status,
            "refunded_cents": self.refunded_cents,
            "refund_reference": self.refund_reference,
        }

    def mark_refunded(self, cents: int, reference: str) -> bool:
        """Record a refund; True if this call did it, False if the order was already refunded."""
        return (
            Order.objects.filter(pk=self.pk, status=OrderStatus.PAID).update(
                status=OrderStatus.REFUNDED,
                refunded_cents=cents,
                refund_reference=reference,
                updated_at=timezone.now(),
            )
            == 1
        )


class Payment(models.Model):
    """The payment simulator's ledger: money that actually moved, once per idempotency key."""

    idempotency_key = models.CharField(max_length=100, unique=True)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="payments")
    amount_cents = models.IntegerField()  # negative: money back to the customer
    reference = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.reference}: {self.amount_cents} cents for {self.order_id}"


class PaymentRequest(models.Model):
    """Every request the payment simulator received, including those that timed out."""

    idempotency_key = models.CharField(max_length=100)
    order_number = models.CharField(max_length=20)
    amount_cents = models.IntegerField()
    # paid: a new ledger entry; replayed: the key's earlier entry was returned;
    # timeout-before / timeout-after: no answer, the payment did not / did go through.
    outcome = models.CharField(max_length=20)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The simulator's "time out the first N requests of a key" fault injection.
            models.Index(fields=["idempotency_key"], name="paymentrequest_key"),
        ]

    def __str__(self) -> str:
        return f"{self.idempotency_key}: {self.outcome}"


class Note(models.Model):
    """A research agent's note, one per take_note step (keyed by its idempotency key)."""

    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.CharField(max_length=100, unique=True)
    source = models.CharField(max_length=100, blank=True)
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:60]


class Notification(models.Model):
    """A message an agent sent to a person (escalations, customer replies): the outbox."""

    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.CharField(max_length=100, unique=True)
    recipient = models.CharField(max_length=200)
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"to {self.recipient}: {self.subject}"


class FaultMark(models.Model):
    """Fault injection happened here once; it does not happen again for the same run and step."""

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=10)  # "crash" or "pause"
    pid = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "position", "kind"], name="one_fault_per_run_step_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} at run {self.run_id} step {self.position}"

    @classmethod
    def first_time(cls, run_id: int, position: int, kind: str, pid: int = 0) -> bool:
        """Claim this fault for (run, position, kind); False if it was injected before."""
        try:
            with transaction.atomic():
                cls.objects.create(run_id=run_id, position=position, kind=kind, pid=pid)
        except IntegrityError:
            return False
        return True
