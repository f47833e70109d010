"""The run timeline draws waits at their real length on a wall-clock axis."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from runs.models import Run, Status
from runs.recovery import sweep
from runs.templatetags.dashboard import CHART_WIDTH, build_timeline
from runs.views.run_page import StepRow, step_history
from steps.models import Checkpoint
from tests import workflows  # noqa: F401  (registers the test workflows)

pytestmark = pytest.mark.django_db(transaction=True)


def bars_of(timeline, kind: str):
    return [(lane.label, bar) for lane in timeline.lanes for bar in lane.bars if bar.kind == kind]


def test_a_ten_second_sleep_is_drawn_ten_seconds_long(doorbells):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        run = Run.objects.start("sleeper", {"seconds": 10})
        assert doorbells.drain() == ["ok/sleep"]
    with time_machine.travel(start + timedelta(seconds=10), tick=False):
        sweep()
        assert doorbells.drain() == ["succeeded"]
    run = Run.objects.get(pk=run.pk)
    assert run.status == Status.SUCCEEDED

    timeline = build_timeline(run, step_history(run, inline=True))
    ((label, wait),) = bars_of(timeline, "wait")
    assert label.startswith("1 sleep")
    assert wait.title.endswith("sleep · 10.0 s")
    plot = CHART_WIDTH - 190 - 10  # the axis, between the lane labels and the margin
    assert wait.width == pytest.approx(plot, rel=0.01)  # the sleep is (nearly) the whole run
    steps = [bar for _, bar in bars_of(timeline, "succeeded")]
    assert steps[-1].x == pytest.approx(190 + plot, abs=6)  # the last step after it, at the end


def test_a_signal_wait_and_a_child_run_are_drawn_at_their_length():
    t0 = timezone.now()

    def step(position, name, begin, end):
        checkpoint = Checkpoint(
            position=position,
            name=name,
            status="succeeded",
            started_at=t0 + timedelta(seconds=begin),
            finished_at=t0 + timedelta(seconds=end),
        )
        return StepRow(position, name, checkpoint=checkpoint)

    steps = [
        step(0, "plan", 0, 0.05),
        step(1, "signal:approve", 14.05, 14.057),  # taken 14 s after the run began waiting
        step(2, "child:report", 15.157, 15.182),  # the child ran 1.1 s
        step(3, "send", 15.19, 15.2),
    ]
    timeline = build_timeline(Run(status=Status.SUCCEEDED), steps)
    per_second = (CHART_WIDTH - 190 - 10) / 15.2
    waits = {label.split()[1]: bar for label, bar in bars_of(timeline, "wait")}
    assert set(waits) == {"signal:approve", "child:report"}
    assert waits["signal:approve"].width == pytest.approx(14.0 * per_second, rel=0.01)
    assert waits["child:report"].width == pytest.approx(1.1 * per_second, rel=0.01)
    assert waits["signal:approve"].title.endswith("signal wait · 14.0 s")
    assert waits["child:report"].title.endswith("child run · 1.1 s")


def test_a_thousand_quick_steps_draw_no_hatching():
    t0 = timezone.now()
    steps = [
        StepRow(
            position,
            "s",
            checkpoint=Checkpoint(
                position=position,
                name="s",
                status="succeeded",
                started_at=t0 + timedelta(milliseconds=10 * position + 1),
                finished_at=t0 + timedelta(milliseconds=10 * position + 9),
            ),
        )
        for position in range(1000)
    ]
    timeline = build_timeline(Run(status=Status.SUCCEEDED), steps)
    assert bars_of(timeline, "wait") == []
    assert timeline.height < 600
