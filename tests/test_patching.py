"""Changing a workflow with runs in flight: ctx.patched / ctx.deprecate_patch, in-process."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from runs.export import export_run, replay
from runs.models import Run, Status
from runs.recovery import sweep
from steps.models import Checkpoint
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)


def deploy(code: str) -> None:
    workflows.TOGGLES["onboarding"] = code


def wake_all(doorbells) -> list[str]:
    with time_machine.travel(timezone.now() + timedelta(hours=2), tick=False):
        sweep()
        return doorbells.drain()


def steps_of(run) -> list[str]:
    return [c.name for c in Run.objects.get(pk=run.pk).live_checkpoints()]


def test_a_run_sleeping_across_a_patch_finishes_on_the_old_path_and_a_new_run_takes_the_new_one(doorbells):
    deploy("old")
    old = Run.objects.start("onboarding", {})
    assert doorbells.drain() == ["ok/sleep"]

    deploy("patched")
    new = Run.objects.start("onboarding", {})
    assert doorbells.drain() == ["ok/sleep"]
    assert wake_all(doorbells) == ["succeeded", "succeeded"]

    old.refresh_from_db(), new.refresh_from_db()
    assert (old.status, old.output) == (Status.SUCCEEDED, {"account": 12, "welcomed": None})
    assert steps_of(old) == ["add", "sleep", "add"]
    assert (new.status, new.output) == (Status.SUCCEEDED, {"account": 12, "welcomed": "welcome 2"})
    assert steps_of(new) == ["add", "patch:send-welcome", "welcome", "sleep", "add"]
    assert workflows.CALLS["welcome"] == 1


def test_without_the_patch_the_same_change_fails_the_sleeping_run(doorbells):
    deploy("old")
    run = Run.objects.start("onboarding", {})
    doorbells.drain()
    deploy("unguarded")
    assert wake_all(doorbells) == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "NonDeterminismError"
    assert "'welcome'" in run.error_message and "'sleep'" in run.error_message


def test_a_run_that_had_not_reached_the_patch_takes_the_new_path(doorbells):
    # It reaches that point under code that has the change: the new path is the right one.
    deploy("old")
    run = Run.objects.start("onboarding", {})
    Checkpoint.objects.filter(run=run).delete()  # a run not started yet, as if queued before
    deploy("patched")
    assert doorbells.drain() == ["ok/sleep"]
    assert steps_of(run) == ["add", "patch:send-welcome", "welcome", "sleep"]


def test_the_marker_is_replayed_and_the_new_step_is_not_called_again(doorbells):
    deploy("patched")
    run = Run.objects.start("onboarding", {})
    doorbells.drain()
    assert workflows.CALLS["welcome"] == 1
    wake_all(doorbells)
    assert workflows.CALLS["welcome"] == 1
    marker = Checkpoint.objects.get(run=run, name="patch:send-welcome")
    assert (marker.position, marker.output, marker.input) == (1, True, None)


def test_deprecate_patch_replays_runs_with_the_marker_and_new_runs_record_none(doorbells):
    deploy("patched")
    patched_run = Run.objects.start("onboarding", {})
    doorbells.drain()
    deploy("deprecated")
    fresh = Run.objects.start("onboarding", {})
    doorbells.drain()
    assert wake_all(doorbells) == ["succeeded", "succeeded"]
    assert steps_of(patched_run) == ["add", "patch:send-welcome", "welcome", "sleep", "add"]
    assert steps_of(fresh) == ["add", "welcome", "sleep", "add"]
    for run in (patched_run, fresh):
        assert Run.objects.get(pk=run.pk).output == {"account": 12, "welcomed": "welcome 2"}


def test_a_change_id_must_be_a_short_string(doorbells):
    from runs.workflow import patch_marker

    assert patch_marker("send-welcome") == "patch:send-welcome"
    with pytest.raises(ValueError):
        patch_marker("")
    with pytest.raises(ValueError):
        patch_marker("x" * 151)
    with pytest.raises(TypeError):
        patch_marker(3)


def test_the_replay_of_an_export_follows_the_patch_as_the_engine_does(doorbells):
    deploy("old")
    old = Run.objects.start("onboarding", {})
    doorbells.drain()
    deploy("patched")
    new = Run.objects.start("onboarding", {})
    doorbells.drain()
    wake_all(doorbells)
    later = time_machine.travel(timezone.now() + timedelta(hours=3), tick=False)
    with later:  # exported after the sleeps ended
        old_export, new_export = (export_run(Run.objects.get(pk=run.pk)) for run in (old, new))
    assert replay(old_export).outcome == "clean"
    assert replay(new_export).outcome == "clean"
    deploy("old")  # the patch taken away while a run that took it is recorded
    report = replay(new_export)
    assert report.outcome == "diverged"
    assert "deprecate_patch('send-welcome')" in report.message


# --- step inputs ---------------------------------------------------------------------


def test_each_step_records_its_arguments_on_its_checkpoint(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    inputs = [c.input for c in Run.objects.get(pk=run.pk).live_checkpoints()]
    assert [(i["args"], i["kwargs"]) for i in inputs] == [([1, 2], {}), ([3], {}), ([6], {})]
    assert all(len(i["sha256"]) == 64 for i in inputs)


def test_a_failed_step_records_its_arguments_too(doorbells):
    run = Run.objects.start("refusal", {})
    doorbells.drain()
    failed = Run.objects.get(pk=run.pk).live_checkpoints().get(status="failed")
    assert (failed.name, failed.input["args"], failed.input["kwargs"]) == ("refuse", ["account locked"], {})


def test_large_arguments_keep_only_their_digest_and_odd_ones_only_a_reason(settings):
    from runs import stepinputs

    settings.DURABLE_STEP_INPUT_BYTES = 100
    big = stepinputs.record(["x" * 500], {})
    assert set(big) == {"sha256", "bytes", "omitted"} and big["bytes"] > 500
    odd = stepinputs.record([object()], {})
    assert set(odd) == {"omitted"} and "not JSON-serialisable" in odd["omitted"]
    # A digest still tells a changed call from the same one, even when the value is not kept.
    assert stepinputs.differences(big, ["x" * 500], {}) == []
    assert stepinputs.differences(big, ["y" * 500], {}) != []


def test_secrets_in_arguments_are_redacted_in_the_stored_copy_but_compare_exactly(settings):
    from runs import stepinputs

    settings.DURABLE_REDACT_VALUES = ["hunter2-very-secret"]
    recorded = stepinputs.record(["hunter2-very-secret"], {"n": 1})
    assert recorded["args"] == ["[redacted]"]
    assert stepinputs.differences(recorded, ["hunter2-very-secret"], {"n": 1}) == []
    assert stepinputs.differences(recorded, ["hunter2-very-secret"], {"n": 2}) == ["n=: 1 -> 2"]


def test_differences_name_each_changed_argument():
    from runs import stepinputs

    recorded = stepinputs.record([1, "a"], {"limit": 5})
    assert stepinputs.differences(recorded, [1, "b"], {"limit": 5, "extra": True}) == [
        'argument 1: "a" -> "b"',
        "extra=: (none) -> true",
    ]
    assert stepinputs.differences(None, [1], {}) == []  # nothing recorded: nothing to compare
