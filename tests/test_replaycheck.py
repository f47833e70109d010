"""`manage.py runs check`: every in-flight run replayed against the code here, before a deploy."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from runs import replaycheck, stepinputs
from runs.models import ReplayCheck, Run, Status
from steps.models import Checkpoint, CheckpointStatus
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)


def deploy(code: str) -> None:
    workflows.TOGGLES["onboarding"] = code


def check(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("runs", "check", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def sleeping_onboarding(doorbells, code: str, count: int = 1) -> list[Run]:
    deploy(code)
    runs = [Run.objects.start("onboarding", {}) for _ in range(count)]
    assert doorbells.drain() == ["ok/sleep"] * count
    return runs


def test_it_passes_a_change_behind_ctx_patched(doorbells):
    sleeping_onboarding(doorbells, "old", 2)
    deploy("patched")
    out, error = check()
    assert error is None, out
    assert "onboarding: 2 runs, 2 replay cleanly, all replay cleanly" in out
    assert "checked 2 runs of 1 workflows" in out


def test_it_reports_a_diverging_change_with_the_steps_at_its_position_and_fails(doorbells):
    old = sleeping_onboarding(doorbells, "old", 2)
    deploy("unguarded")
    out, error = check()
    assert error is not None and "2 in-flight runs would not replay" in str(error)
    assert "onboarding: 2 runs, 0 replay cleanly, 2 diverge" in out
    assert (
        f"run {old[0].pk} (waiting): diverged: at position 1 the code now calls 'welcome' but the "
        "recorded step there is 'sleep'" in out
    )


def test_it_reports_argument_changes_from_the_recorded_inputs(doorbells):
    (run,) = sleeping_onboarding(doorbells, "old")
    deploy("renamed")
    out, error = check()
    assert error is not None
    assert f"run {run.pk} (waiting): replays, but with other arguments" in out
    assert "step 'add' at position 0:" in out
    assert "argument 0: 1 -> 100" in out


def test_it_checks_only_in_flight_runs_and_honours_filters(doorbells):
    sleeping_onboarding(doorbells, "old")
    finished = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    assert Run.objects.get(pk=finished.pk).status == Status.SUCCEEDED
    deploy("unguarded")
    report = replaycheck.check_runs()
    assert list(report.workflows) == ["onboarding"]  # the finished run is not read
    assert replaycheck.check_runs(workflows=["arithmetic"]).runs == 0
    assert replaycheck.check_runs(statuses=[Status.FAILED]).runs == 0
    out, error = check("--status", "failed")
    assert error is None and "checked 0 runs" in out


def test_a_run_of_a_workflow_not_deployed_here_is_unsafe(doorbells):
    from tests.factories import make_run

    run = make_run(Status.WAITING, workflow="retired_flow")
    out, error = check()
    assert error is not None
    assert f"run {run.pk} (waiting): error: No workflow named 'retired_flow'" in out


def test_it_never_calls_a_step_nor_changes_a_run(doorbells):
    (run,) = sleeping_onboarding(doorbells, "old")
    before = Run.objects.filter(pk=run.pk).values().get()
    checkpoints = Checkpoint.objects.count()
    workflows.CALLS.clear()
    deploy("patched")
    check()
    assert workflows.CALLS == {}
    assert Run.objects.filter(pk=run.pk).values().get() == before
    assert Checkpoint.objects.count() == checkpoints


def test_it_keeps_the_report_for_the_dashboard_unless_told_not_to(doorbells):
    sleeping_onboarding(doorbells, "old")
    deploy("unguarded")
    check()
    kept = ReplayCheck.objects.latest()
    assert (kept.runs, kept.unsafe, kept.ok) == (1, 1, False)
    finding = kept.workflows["onboarding"]["findings"][0]
    assert (finding["position"], finding["expected"], finding["called"]) == (1, "sleep", "welcome")
    check("--no-save")
    assert ReplayCheck.objects.count() == 1


def make_counted_runs(count: int, steps: int) -> None:
    """`count` waiting runs of "counter" with `steps` recorded steps each, written in bulk."""
    now = timezone.now()
    runs = Run.objects.bulk_create(
        Run(workflow="counter", input={"steps": steps + 1}, status=Status.WAITING, steps_done=steps)
        for _ in range(count)
    )
    Checkpoint.objects.bulk_create(
        (
            Checkpoint(
                run=run,
                position=i,
                name="add",
                status=CheckpointStatus.SUCCEEDED,
                output=i,
                input=stepinputs.record([i, 0], {}),
                started_at=now - timedelta(seconds=1),
                finished_at=now,
            )
            for run in runs
            for i in range(steps)
        ),
        batch_size=2000,
    )


def test_it_checks_a_thousand_runs_of_twenty_steps(capsys):
    make_counted_runs(1000, 20)
    report = replaycheck.check_runs()
    check_ = report.workflows["counter"]
    assert (report.runs, check_.clean, report.unsafe) == (1000, 1000, 0)
    assert dict(check_.outcomes) == {"continues": 1000}
    with capsys.disabled():
        print(f"\nruns check: 1,000 runs of 20 steps in {report.seconds:.2f} s")
