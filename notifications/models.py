"""Notification rules, and one Delivery per (rule, run, event).

`scan()` (beat, every DURABLE_NOTIFY_POLL_SECONDS) finds runs that failed, were
dead-lettered, wait for a person (a signal) or succeeded after a crash recovery, and for
each matching rule creates a Delivery, unique per rule, run and event, and starts a run of
the built-in workflow `notifications.deliver` with the idempotency key of that Delivery:
the delivery is itself durable, retried with backoff, and shown in the dashboard.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from runs.models import AuditEntry, Run, Status, WaitKind

log = logging.getLogger(__name__)

DELIVERY_WORKFLOW = "notifications.deliver"


class Event(models.TextChoices):
    FAILED = "failed", "failed"
    DEAD = "dead", "dead-lettered"
    WAITING_FOR_PERSON = "waiting_for_person", "waiting for a person"
    RECOVERED = "succeeded_after_recovery", "succeeded after recovery"
    TEST = "test", "test delivery"


class Channel(models.TextChoices):
    WEBHOOK = "webhook", "webhook (JSON, HMAC-signed)"
    EMAIL = "email", "email"


def runs_with(event: str, since):
    """The runs an event applies to, among those that changed since `since`."""
    runs = Run.objects.exclude(workflow=DELIVERY_WORKFLOW)  # a failed delivery notifies nobody
    if event == Event.FAILED:
        return runs.filter(status=Status.FAILED, finished_at__gte=since)
    if event == Event.DEAD:
        return runs.filter(status=Status.DEAD, updated_at__gte=since)
    if event == Event.WAITING_FOR_PERSON:
        return runs.filter(status=Status.WAITING, wait_kind=WaitKind.SIGNAL)
    if event == Event.RECOVERED:
        return runs.filter(status=Status.SUCCEEDED, recovery_count__gt=0, finished_at__gte=since)
    return runs.none()


class Rule(models.Model):
    name = models.CharField(max_length=200, unique=True)
    # Empty: every workflow.
    workflow = models.CharField(max_length=200, blank=True)
    events = models.JSONField(default=list, help_text=f"some of: {', '.join(Event.values[:-1])}")
    channel = models.CharField(max_length=10, choices=Channel.choices, default=Channel.WEBHOOK)
    url = models.URLField(blank=True, max_length=1000, help_text="webhook: where the JSON is POSTed")
    # Signs the webhook body (X-Durable-Signature); never sent, never shown after saving.
    secret = models.CharField(max_length=200, blank=True)
    email_to = models.CharField(max_length=1000, blank=True, help_text="email: comma-separated addresses")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.events, list) or not self.events:
            raise ValidationError("Choose at least one event.")
        unknown = [e for e in self.events if e not in Event.values or e == Event.TEST]
        if unknown:
            raise ValidationError(f"Unknown events: {unknown}; use {', '.join(Event.values[:-1])}.")
        if self.channel == Channel.WEBHOOK and not (self.url and self.secret):
            raise ValidationError("A webhook needs a URL and a secret to sign with.")
        if self.channel == Channel.EMAIL and not self.recipients():
            raise ValidationError("An email rule needs at least one address.")

    def recipients(self) -> list[str]:
        return [address.strip() for address in self.email_to.split(",") if address.strip()]

    def notify(self, run: Run | None, event: str, by=None) -> Delivery | None:
        """Create this (run, event)'s delivery and start its run; None if it exists already."""
        try:
            with transaction.atomic():
                delivery = Delivery.objects.create(rule=self, run=run, event=event)
                delivery.start(by=by or f"notifications:{self.name}")
        except IntegrityError:
            return None
        return delivery

    def send_test(self, by, reason: str = "") -> Delivery:
        with transaction.atomic():
            delivery = self.notify(None, Event.TEST, by=by)
            AuditEntry.record(
                delivery.delivery_run,
                "notification-test",
                by,
                reason,
                details={"rule": self.pk, "name": self.name},
            )
        return delivery


class Delivery(models.Model):
    """One notification of one run's event to one rule, delivered by a durable run."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="deliveries")
    # The run the notification is about (none for a test delivery).
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    event = models.CharField(max_length=30, choices=Event.choices)
    # The run of notifications.deliver that sends it, with its attempts and retries.
    delivery_run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="delivering"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # Deduplication: a run's event is notified once per rule.
            models.UniqueConstraint(
                fields=["rule", "run", "event"],
                condition=models.Q(run__isnull=False),
                name="one_delivery_per_event",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule} {self.event} run {self.run_id}"

    def start(self, by) -> None:
        self.delivery_run, _ = Run.objects.start_or_get(
            DELIVERY_WORKFLOW,
            {"delivery_id": self.pk},  # no secret and no payload in the run's input
            by=by,
            dedupe_key=f"notify:{self.pk}",
        )
        self.save(update_fields=["delivery_run"])


def scan(now=None) -> list[Delivery]:
    """Start the deliveries due for every enabled rule (what beat calls)."""
    now = now or timezone.now()
    since = now - timedelta(hours=settings.DURABLE_NOTIFY_LOOKBACK_HOURS)
    started = []
    for rule in Rule.objects.filter(enabled=True):
        for event in rule.events if isinstance(rule.events, list) else []:
            notified = Delivery.objects.filter(rule=rule, event=event, run=models.OuterRef("pk"))
            runs = runs_with(event, since).exclude(models.Exists(notified))
            if rule.workflow:
                runs = runs.filter(workflow=rule.workflow)
            for run in runs.order_by("pk")[:1000]:
                delivery = rule.notify(run, event)
                if delivery is not None:
                    started.append(delivery)
    return started
