"""python manage.py runs ..."""

import io
import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from runs.models import AuditEntry, Run, Status
from tests import workflows  # noqa: F401  (registers the test workflows)

pytestmark = pytest.mark.django_db(transaction=True)


def runs(*args) -> str:
    out = io.StringIO()
    call_command("runs", *args, stdout=out)
    return out.getvalue()


def test_it_starts_lists_and_shows_a_run(doorbells):
    assert "started run" in runs("start", "arithmetic", "--input", '{"a": 2, "b": 5}')
    run = Run.objects.get()
    assert run.input == {"a": 2, "b": 5}
    assert AuditEntry.objects.get(run=run, action="start").actor_name.startswith("cli:")
    doorbells.drain()

    listing = runs("list", "--status", "succeeded")
    assert str(run.pk) in listing and "arithmetic" in listing
    assert runs("list", "--status", "failed") == "no runs\n"

    shown = runs("show", str(run.pk))
    assert '"doubled": 14' in shown
    assert "add" in shown and "double" in shown and "maybe_crash" in shown


def test_it_resumes_retries_cancels_and_signals(doorbells):
    run = Run.objects.start("approval", {})
    doorbells.drain()
    assert "sent signal 'approve'" in runs(
        "signal", str(run.pk), "approve", "--payload", '{"approved": true}'
    )
    doorbells.drain()
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED

    assert "retrying run" in runs("retry", str(run.pk), "--from-step", "1", "--reason", "again")
    assert Run.objects.get(pk=run.pk).status == Status.PENDING
    assert "cancelled" in runs("cancel", str(run.pk))
    assert Run.objects.get(pk=run.pk).status == Status.CANCELLED

    failed = Run.objects.start("malformed", {})
    doorbells.drain()
    assert "resumed run" in runs("resume", str(failed.pk))
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"signal", "retry", "cancel", "resume"} <= actions


def test_it_terminates_a_running_run(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    assert Run.objects.claim(run.pk, "w", "t")
    assert "terminate requested" in runs("terminate", str(run.pk), "--reason", "hung")
    assert AuditEntry.objects.filter(run=run, action="terminate", reason="hung").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "no_such_workflow"], "No workflow named 'no_such_workflow'"),
        (["start", "arithmetic", "--input", "{not json"], "not valid JSON"),
        (["show", "999999"], "No run with id 999999"),
        (["retry", "999999", "--from-step", "0"], "No run with id 999999"),
        (["signal", "999999", "go", "--payload", "[1,"], "not valid JSON"),
        (["list", "--limit", "0"], "--limit must be at least 1"),
        (["list", "--status", "bogus"], "invalid choice"),
        (["retry", "1"], "--from-step"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_it_rejects_bad_arguments_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message):
        runs(*args)
    assert Run.objects.count() == 0


def test_it_refuses_a_wrong_state_action(doorbells):
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.drain()
    with pytest.raises(CommandError, match=r"Cannot resume run .* it is succeeded"):
        runs("resume", str(run.pk))


def test_it_exits_non_zero_from_the_shell():
    env = {**os.environ, "DURABLE_WORKFLOW_MODULES": "tests.workflows"}
    result = subprocess.run(
        [sys.executable, "manage.py", "runs", "start", "nope"], capture_output=True, text=True, env=env
    )
    assert result.returncode != 0
    assert "No workflow named 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
