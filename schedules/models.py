"""Schedules: start a run of a workflow at every tick of a cron expression or an interval.

Beat calls `fire_due` every DURABLE_SCHEDULE_POLL_SECONDS. A schedule's due ticks are taken
with a conditional UPDATE of its `last_tick_at` (only one caller moves it from the value it
read), and each fired tick is a `Tick` row unique per (schedule, tick time) whose run is
started with the idempotency key `schedule:<id>:<tick time>`: two beats, or a beat that
restarts, never start a tick twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from runs.jsoninput import StoredJSONDecoder
from runs.models import AuditEntry, InvalidOperation, Run, Status
from runs.workflow import UnknownWorkflow, registry
from schedules import timing

log = logging.getLogger(__name__)

MAX_CATCH_UP = 100  # missed ticks fired at most, per schedule and call, with catch-up "all"
UNFINISHED = (Status.QUEUED, Status.PENDING, Status.RUNNING, Status.WAITING)


class Overlap(models.TextChoices):
    SKIP = "skip", "skip the tick while the previous run is unfinished"
    ALLOW = "allow", "start anyway"
    CANCEL_PREVIOUS = "cancel_previous", "cancel the unfinished run, then start"


class CatchUp(models.TextChoices):
    LATEST = "latest", "fire the latest missed tick once"
    ALL = "all", f"fire every missed tick (at most {MAX_CATCH_UP})"
    NONE = "none", "fire no missed tick"


class Schedule(models.Model):
    name = models.CharField(max_length=200, unique=True)
    workflow = models.CharField(max_length=200)
    input = models.JSONField(null=True, blank=True, decoder=StoredJSONDecoder)
    cron = models.CharField(max_length=100, blank=True, help_text='e.g. "0 7 * * 1-5": weekdays at 07:00')
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="the zone the cron expression is read in"
    )
    queue = models.CharField(max_length=100, blank=True)
    enabled = models.BooleanField(default=True)
    overlap = models.CharField(max_length=20, choices=Overlap.choices, default=Overlap.SKIP)
    catch_up = models.CharField(max_length=10, choices=CatchUp.choices, default=CatchUp.LATEST)
    # Declared with @workflow(schedule=...): its timing follows the code at each deploy.
    from_code = models.BooleanField(default=False)
    # The latest tick handled (fired or let pass); the next due ticks come after it.
    last_tick_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(interval_seconds__isnull=True) & ~models.Q(cron=""))
                | (models.Q(interval_seconds__gt=0) & models.Q(cron="")),
                name="schedule_cron_or_interval",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def timing(self) -> str:
        return f"{self.cron} ({self.time_zone})" if self.cron else f"every {self.interval_seconds} s"

    def clean(self) -> None:
        if bool(self.cron) == bool(self.interval_seconds):
            raise ValidationError("Give either a cron expression or an interval, not both.")
        try:
            if self.cron:
                timing.parse_cron(self.cron)
            timing.zone(self.time_zone)
        except timing.BadTiming as exc:
            raise ValidationError(str(exc)) from None
        if self.workflow not in registry.names():
            raise ValidationError(f"No workflow named {self.workflow!r} is registered.")

    # --- tick times ---------------------------------------------------------------------

    def ticks(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        if self.cron:
            return timing.cron_ticks(self.cron, self.time_zone, after, until, limit)
        return timing.interval_ticks(self.interval_seconds, after, until, limit)

    def latest_tick(self, after: datetime, until: datetime) -> datetime | None:
        if self.cron:
            return timing.cron_latest(self.cron, self.time_zone, after, until)
        latest = timing.latest_interval_tick(self.interval_seconds, until)
        return latest if latest > after else None

    def next_fire_times(self, count: int = 5, now: datetime | None = None) -> list[datetime]:
        now = now or timezone.now()
        try:
            return self.ticks(now, now + timedelta(days=timing.LOOK_AHEAD_DAYS), count)
        except timing.BadTiming:
            return []

    # --- firing -------------------------------------------------------------------------

    def fire_due(self, now: datetime | None = None) -> list[Tick]:
        """Fire the ticks that came due since the last one, as the catch-up policy says."""
        now = now or timezone.now()
        since = self.last_tick_at or self.created_at
        try:
            latest = self.latest_tick(since, now)
        except timing.BadTiming as exc:
            log.warning("schedule %s cannot fire: %s", self.name, exc)
            return []
        if latest is None:
            return []
        # The claim: only the caller that moves last_tick_at from what it read fires these ticks.
        claimed = Schedule.objects.filter(pk=self.pk, enabled=True, last_tick_at=self.last_tick_at)
        if self.last_tick_at is None:
            claimed = Schedule.objects.filter(pk=self.pk, enabled=True, last_tick_at__isnull=True)
        if claimed.update(last_tick_at=latest) != 1:
            return []  # another beat took them, or the schedule was paused meanwhile
        self.last_tick_at = latest
        if self.catch_up == CatchUp.ALL:
            chosen = self.ticks(since, latest, MAX_CATCH_UP)
        elif self.catch_up == CatchUp.NONE:
            grace = timedelta(seconds=2 * settings.DURABLE_SCHEDULE_POLL_SECONDS)
            chosen = [latest] if now - latest <= grace else []
        else:
            chosen = [latest]
        return [self.fire(tick) for tick in chosen]

    def fire(self, tick_at: datetime, *, by=None, manual: bool = False) -> Tick:
        """Start the tick's run (once: a tick already fired is returned as it is)."""
        actor = by or f"schedule:{self.name}"
        try:
            with transaction.atomic():
                tick = Tick.objects.create(schedule=self, tick_at=tick_at, manual=manual)
                tick.outcome, tick.reason, tick.run = self._start(tick_at, actor)
                tick.save(update_fields=["outcome", "reason", "run"])
        except IntegrityError:
            return Tick.objects.get(schedule=self, tick_at=tick_at)
        return tick

    def _start(self, tick_at: datetime, actor) -> tuple[str, str, Run | None]:
        unfinished = Run.objects.filter(schedule_ticks__schedule=self, status__in=UNFINISHED).order_by("pk")
        if self.overlap == Overlap.SKIP and unfinished.exists():
            return TickOutcome.SKIPPED, f"run {unfinished.first().pk} of an earlier tick is unfinished", None
        if self.overlap == Overlap.CANCEL_PREVIOUS:
            for run in unfinished:
                try:
                    run.cancel(by=actor, reason=f"schedule {self.name}: a new tick is due")
                except InvalidOperation:
                    pass  # it finished meanwhile
        key = f"schedule:{self.pk}:{tick_at.isoformat()}"
        try:
            run, _ = Run.objects.start_or_get(
                self.workflow, self.input, queue=self.queue, by=actor, dedupe_key=key
            )
        except (UnknownWorkflow, ValueError, InvalidOperation) as exc:
            return TickOutcome.ERROR, str(exc)[:1000], None
        return TickOutcome.STARTED, "", run

    # --- operator actions ------------------------------------------------------------------

    def pause(self, by, reason: str = "") -> None:
        self._set_enabled(False, "schedule-pause", by, reason)

    def resume(self, by, reason: str = "") -> None:
        """Enable again; ticks missed while paused are not fired (the next one is)."""
        self._set_enabled(True, "schedule-resume", by, reason)

    def _set_enabled(self, enabled: bool, action: str, by, reason: str) -> None:
        with transaction.atomic():
            changes = {"enabled": enabled}
            if enabled:
                changes["last_tick_at"] = timezone.now()
            if not Schedule.objects.filter(pk=self.pk, enabled=not enabled).update(**changes):
                state = "running" if enabled else "paused"
                raise InvalidOperation(f"Schedule {self.name} is already {state}.")
            AuditEntry.record(None, action, by, reason, details={"schedule": self.pk, "name": self.name})
        self.refresh_from_db()

    def trigger_now(self, by, reason: str = "") -> Tick:
        with transaction.atomic():
            tick = self.fire(timezone.now(), by=by, manual=True)
            AuditEntry.record(
                tick.run,
                "schedule-trigger",
                by,
                reason,
                details={"schedule": self.pk, "name": self.name, "outcome": tick.outcome},
            )
        return tick


class TickOutcome(models.TextChoices):
    STARTED = "started", "started"  # the run was started
    SKIPPED = "skipped", "skipped"  # the overlap policy held it back
    ERROR = "error", "error"  # the run could not be started (workflow gone, queue unknown)


class Tick(models.Model):
    """One fire time of a schedule, and the run it started."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fired_ticks")
    tick_at = models.DateTimeField()
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="schedule_ticks"
    )
    outcome = models.CharField(max_length=10, choices=TickOutcome.choices, default=TickOutcome.STARTED)
    reason = models.TextField(blank=True)
    manual = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-tick_at"]
        constraints = [
            # A tick fires once, however many beats see it due.
            models.UniqueConstraint(fields=["schedule", "tick_at"], name="one_tick_per_time"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} at {self.tick_at:%Y-%m-%d %H:%M}: {self.outcome}"


def sync_from_code() -> None:
    """Create or update the schedules declared with @workflow(schedule=...)."""
    for name in registry.names():
        definition = registry.get(name)
        if not definition.schedule:
            continue
        cron, interval = definition.schedule_timing()
        existing = Schedule.objects.filter(name=name).first()
        if existing is not None and not existing.from_code:
            log.warning("schedule %s: a schedule of that name was made by hand; the code's is ignored", name)
            continue
        fields = {"workflow": name, "cron": cron, "interval_seconds": interval, "from_code": True}
        fields["time_zone"] = definition.schedule_timezone
        if existing is None:
            try:
                Schedule.objects.create(name=name, **fields)
            except IntegrityError:
                pass  # another process created it
        elif any(getattr(existing, key) != value for key, value in fields.items()):
            Schedule.objects.filter(pk=existing.pk).update(**fields)


def fire_due(now: datetime | None = None) -> list[Tick]:
    """Fire every enabled schedule's due ticks (what beat calls)."""
    sync_from_code()
    fired = []
    for schedule in Schedule.objects.filter(enabled=True):
        fired += schedule.fire_due(now)
    return fired
