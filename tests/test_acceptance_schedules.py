"""Schedules with real beat processes: two beats at once, and one restarted, fire each tick once."""

import pytest
from django.db.models import Count

from runs.models import Run, Status
from schedules.models import Overlap, Schedule, Tick, TickOutcome
from tests.processes import Cluster, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def beat(cluster: Cluster, name: str):
    """A beat process with its own schedule file, as on another machine."""
    return cluster._spawn(name, ["beat", "-l", "info", "-s", str(cluster.log_dir / f"{name}-schedule")])


def test_two_beats_and_a_restarted_one_start_each_tick_once(tmp_path):
    cluster = Cluster(tmp_path, DURABLE_SCHEDULE_POLL_SECONDS="0.3")
    try:
        schedule = Schedule.objects.create(
            name="every-second",
            workflow="arithmetic",
            input={"a": 1, "b": 2},
            interval_seconds=1,
            queue=cluster.queue,
            overlap=Overlap.ALLOW,
        )
        cluster.worker("solo")
        first = beat(cluster, "beat-1")
        beat(cluster, "beat-2")
        started = Tick.objects.filter(schedule=schedule, outcome=TickOutcome.STARTED)
        wait_for(lambda: started.count() >= 4, 90, "four ticks", cluster)
        cluster.kill(first)
        beat(cluster, "beat-1-restarted")
        seen = started.count()
        wait_for(lambda: started.count() >= seen + 4, 90, "four more ticks after the restart", cluster)
        cluster.stop()

        ticks = list(started.values_list("tick_at", "run_id"))
        runs = Run.objects.filter(schedule_ticks__schedule=schedule)
        assert len({tick for tick, _ in ticks}) == len(ticks)
        assert runs.count() == len(ticks)
        # One run per tick: no two runs carry the same tick's key.
        assert not runs.values("dedupe_key").annotate(n=Count("id")).filter(n__gt=1).exists()
        assert all(
            key.startswith(f"schedule:{schedule.pk}:") for key in runs.values_list("dedupe_key", flat=True)
        )
        assert Run.objects.exclude(status__in=[Status.SUCCEEDED, Status.PENDING, Status.RUNNING]).count() == 0
    finally:
        cluster.stop()
