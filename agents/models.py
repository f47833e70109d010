"""What agents leave behind: model calls, demo orders, the payment simulator's ledger.

Rows that stand for a side effect in the outside world (a payment, a note, a
notification) are keyed by the idempotency key of the step that caused them, with
a unique constraint: a step executed twice (a retry after a lost reply, a crash
after the call) finds its earlier row instead of causing the effect again.
"""

from __future__ import annotations

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
    tokens, cost, time). Calls are pruned on their own schedule (agents.retention).
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
