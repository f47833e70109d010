"""python manage.py runs edit / retry-now / bulk, and code warnings on the command line."""

import io

import pytest
from django.core.management import CommandError, call_command

from runs.models import AuditEntry, Run, Status
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)


def runs(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("runs", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failed_pricing(doorbells, count=1) -> list[Run]:
    started = [Run.objects.start("pricing", {"name": f"i{i}", "price": -1}) for i in range(count)]
    doorbells.drain()
    return started


def test_edit_continues_from_the_edited_step(doorbells):
    run = failed_pricing(doorbells)[0]
    out, _ = runs(
        "edit", str(run.pk), "--step", "0", "--output", '{"item": "x", "price": 3}', "--reason", "fix"
    )
    assert "continues from 1" in out
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"invoiced": 3}
    assert AuditEntry.objects.get(run=run, action="edit and continue").reason == "fix"
    with pytest.raises(CommandError, match="not valid JSON"):
        runs("edit", str(run.pk), "--step", "0", "--output", "{x")


def test_retry_now(doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    doorbells.drain()
    workflows.PAYMENTS.timeouts_left = 0
    assert "retries its step now" in runs("retry-now", str(run.pk))[0]
    assert doorbells.drain() == ["succeeded"]
    with pytest.raises(CommandError, match="only a run backing off"):
        runs("retry-now", str(run.pk))


def test_a_resume_under_other_code_warns(doorbells):
    run = failed_pricing(doorbells)[0]
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    out, err = runs("resume", str(run.pk))
    assert "resumed" in out
    assert "warning: The code changed since this run last ran" in err


def test_bulk_is_a_dry_run_until_yes(doorbells):
    started = failed_pricing(doorbells, 3)
    args = [
        "bulk",
        "retry",
        "--from-step",
        "check_price",
        "--failed-step",
        "check_price",
        "--status",
        "failed",
    ]
    out, _ = runs(*args)
    assert "3 run(s) selected; 3 can be acted on" in out
    assert f"run {started[0].pk}  pricing  failed from step 1" in out
    assert "dry run: nothing changed" in out
    assert not AuditEntry.objects.filter(action="retry").exists()
    out, _ = runs(*args, "--yes", "--reason", "fixed")
    assert "retried 3 run(s); 0 left" in out
    assert AuditEntry.objects.filter(action="retry", reason="fixed").count() == 3
    assert {r.status for r in Run.objects.filter(workflow="pricing")} == {Status.PENDING}
    with pytest.raises(CommandError, match="needs the step's name"):
        runs("bulk", "retry", "--status", "failed")


def test_list_shows_the_runs_in_retry_backoff(doorbells):
    workflows.PAYMENTS.timeouts_left = 100
    backing_off = Run.objects.start("payment", {"cents": 700})
    other = failed_pricing(doorbells)[0]
    listing, _ = runs("list", "--status", "retrying")
    assert f"{backing_off.pk:>8}  waiting" in listing
    assert f"{other.pk:>8}" not in listing
