"""Schedules: cron and interval ticks, each fired once however many beats see it."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse

from runs.models import AuditEntry, Run, Status
from schedules.models import CatchUp, Overlap, Schedule, Tick, TickOutcome, fire_due
from schedules.tasks import fire_schedules
from tests.factories import make_operator, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)

# Friday 4 December 2026, 08:00 in Paris (07:00 UTC).
FRIDAY_MORNING = datetime(2026, 12, 4, 7, 0, tzinfo=UTC)


def hourly(name: str = "hourly", **fields) -> Schedule:
    fields = {"workflow": "arithmetic", "input": {"a": 1, "b": 2}, "cron": "0 * * * *", **fields}
    with time_machine.travel(FRIDAY_MORNING, tick=False):
        return Schedule.objects.create(name=name, **fields)


def at(moment: datetime):
    return time_machine.travel(moment, tick=False)


def runs_of(schedule: Schedule) -> list[Run]:
    return list(Run.objects.filter(schedule_ticks__schedule=schedule).order_by("pk"))


def test_cron_is_read_in_the_schedules_time_zone_and_the_next_five_times_are_listed():
    schedule = Schedule(name="d", workflow="digest", cron="0 7 * * 1-5", time_zone="Europe/Paris")
    schedule.clean()
    times = schedule.next_fire_times(5, now=FRIDAY_MORNING)
    # Weekdays at 07:00 Paris (06:00 UTC in winter), from Monday: Friday's 07:00 has passed.
    assert times == [datetime(2026, 12, day, 6, 0, tzinfo=UTC) for day in (7, 8, 9, 10, 11)]


def test_a_bad_expression_zone_or_workflow_is_refused():
    with pytest.raises(ValidationError, match="5 fields"):
        Schedule(name="x", workflow="digest", cron="0 7 * *").clean()
    with pytest.raises(ValidationError, match="61"):
        Schedule(name="x", workflow="digest", cron="61 7 * * *").clean()
    with pytest.raises(ValidationError, match="time zone"):
        Schedule(name="x", workflow="digest", cron="0 7 * * *", time_zone="Mars/Olympus").clean()
    with pytest.raises(ValidationError, match="either"):
        Schedule(name="x", workflow="digest", cron="0 7 * * *", interval_seconds=60).clean()
    with pytest.raises(ValidationError, match="No workflow"):
        Schedule(name="x", workflow="nope", cron="0 7 * * *").clean()


def test_each_tick_fires_once_across_two_beats_and_a_beat_restart(doorbells):
    schedule = hourly()
    tick = FRIDAY_MORNING + timedelta(hours=1)
    with at(tick + timedelta(seconds=3)):
        # Two beats that read the schedule before either fired it.
        first, second = Schedule.objects.get(pk=schedule.pk), Schedule.objects.get(pk=schedule.pk)
        assert [t.outcome for t in first.fire_due()] == [TickOutcome.STARTED]
        assert second.fire_due() == []
        # A beat restarted: it remembers nothing, the database does.
        assert fire_schedules() == 0
    with at(tick + timedelta(seconds=9)):
        fire_due()
    runs = runs_of(schedule)
    assert len(runs) == 1
    assert runs[0].dedupe_key == f"schedule:{schedule.pk}:{tick.isoformat()}"
    assert doorbells.drain() == ["succeeded"]
    with at(tick + timedelta(hours=1, seconds=1)):
        fire_due()
    assert len(runs_of(schedule)) == 2


def test_a_tick_fired_twice_by_hand_still_starts_one_run(doorbells):
    schedule = hourly()
    tick = FRIDAY_MORNING + timedelta(hours=1)
    assert schedule.fire(tick).pk == schedule.fire(tick).pk
    assert Tick.objects.count() == 1 and len(runs_of(schedule)) == 1


@pytest.mark.parametrize(("policy", "expected"), [(CatchUp.LATEST, 1), (CatchUp.ALL, 72), (CatchUp.NONE, 0)])
def test_after_three_days_down_the_catch_up_policy_decides_what_fires(doorbells, policy, expected):
    schedule = hourly(catch_up=policy, overlap=Overlap.ALLOW)
    with at(FRIDAY_MORNING + timedelta(days=3, minutes=30)):
        fire_due()
    assert len(runs_of(schedule)) == expected
    with at(FRIDAY_MORNING + timedelta(days=3, hours=1, seconds=2)):
        fire_due()  # and the next tick fires as usual
    assert len(runs_of(schedule)) == expected + 1


def test_overlap_skip_holds_a_tick_back_while_the_previous_run_is_unfinished(doorbells):
    hourly()
    with at(FRIDAY_MORNING + timedelta(hours=1, seconds=1)):
        fire_due()
    with at(FRIDAY_MORNING + timedelta(hours=2, seconds=1)):
        (tick,) = fire_due()
    assert tick.outcome == TickOutcome.SKIPPED and tick.run is None
    assert "is unfinished" in tick.reason
    doorbells.drain()  # the first run finishes
    with at(FRIDAY_MORNING + timedelta(hours=3, seconds=1)):
        (tick,) = fire_due()
    assert tick.outcome == TickOutcome.STARTED


def test_overlap_cancel_previous_cancels_the_unfinished_run_first(doorbells):
    schedule = hourly(overlap=Overlap.CANCEL_PREVIOUS)
    with at(FRIDAY_MORNING + timedelta(hours=1, seconds=1)):
        fire_due()
    with at(FRIDAY_MORNING + timedelta(hours=2, seconds=1)):
        fire_due()
    first, second = runs_of(schedule)
    assert (first.status, second.status) == (Status.CANCELLED, Status.PENDING)


def test_a_paused_schedule_does_not_fire_and_resuming_skips_the_missed_ticks(doorbells):
    schedule = hourly()
    operator = make_operator()
    schedule.pause(by=operator, reason="holiday")
    with at(FRIDAY_MORNING + timedelta(hours=5)):
        assert fire_due() == []
        schedule.resume(by=operator)
    with at(FRIDAY_MORNING + timedelta(hours=5, minutes=30)):
        assert fire_due() == []
    with at(FRIDAY_MORNING + timedelta(hours=6, seconds=1)):
        assert len(fire_due()) == 1
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "reason"))
    assert ("schedule-pause", "holiday") in actions and ("schedule-resume", "") in actions


def test_a_workflow_declares_its_schedule_in_code():
    fire_due()
    schedule = Schedule.objects.get(name="digest")
    assert (schedule.cron, schedule.time_zone, schedule.from_code) == ("0 7 * * 1-5", "Europe/Paris", True)


def test_an_interval_ticks_on_multiples_of_itself(doorbells):
    schedule = hourly(name="every-10s", cron="", interval_seconds=10)
    with at(FRIDAY_MORNING + timedelta(seconds=25)):
        (tick,) = fire_due()
    assert tick.tick_at == FRIDAY_MORNING + timedelta(seconds=20)
    assert schedule.next_fire_times(2, now=FRIDAY_MORNING + timedelta(seconds=25)) == [
        FRIDAY_MORNING + timedelta(seconds=30),
        FRIDAY_MORNING + timedelta(seconds=40),
    ]


# --- pages and actions ----------------------------------------------------------------


def test_the_schedule_page_lists_past_ticks_with_their_runs_and_the_next_five_times(client, doorbells):
    schedule = hourly()
    with at(FRIDAY_MORNING + timedelta(hours=1, seconds=1)):
        fire_due()
    (run,) = runs_of(schedule)
    client.force_login(make_viewer())
    html = client.get(reverse("schedule_detail", args=[schedule.pk])).content.decode()
    assert f'href="{reverse("run_detail", args=[run.pk])}"' in html
    assert html.count("<li>", html.index('id="next-times"')) >= 5
    assert 'id="schedule-actions"' not in html  # a viewer has no buttons
    assert "hourly" in client.get(reverse("schedule_list")).content.decode()


def test_pause_resume_and_trigger_now_are_posts_for_operators_and_audited(client, doorbells):
    schedule = hourly()
    client.force_login(make_viewer())
    assert client.post(reverse("schedule_pause", args=[schedule.pk])).status_code == 403
    assert client.get(reverse("schedule_pause", args=[schedule.pk])).status_code == 405
    client.force_login(make_operator())
    client.post(reverse("schedule_pause", args=[schedule.pk]), {"reason": "maintenance"})
    assert not Schedule.objects.get(pk=schedule.pk).enabled
    response = client.post(reverse("schedule_pause", args=[schedule.pk]), follow=True)
    assert "already paused" in response.content.decode()
    client.post(reverse("schedule_resume", args=[schedule.pk]))
    client.post(reverse("schedule_trigger", args=[schedule.pk]), {"reason": "now please"})
    (tick,) = Tick.objects.filter(schedule=schedule)
    assert tick.manual and tick.run is not None
    audit = AuditEntry.objects.filter(action="schedule-trigger").get()
    assert (audit.run_id, audit.reason, audit.actor_name) == (tick.run_id, "now please", "otto")
    assert AuditEntry.objects.filter(action__in=["schedule-pause", "schedule-resume"]).count() == 2


def test_the_schedule_pages_need_a_login_and_the_view_permission(client):
    schedule = hourly()
    assert client.get(reverse("schedule_list")).status_code == 302
    from tests.factories import make_user

    client.force_login(make_user("nobody"))
    assert client.get(reverse("schedule_detail", args=[schedule.pk])).status_code == 403
    assert client.post(reverse("schedule_trigger", args=[schedule.pk])).status_code == 403
