"""Retention: finished runs older than a cutoff are deleted in batches; active runs never."""

import io
import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from config.celery import app
from runs import maintenance
from runs.models import AuditEntry, Run, Signal, Status
from runs.retention import prunable, prune
from steps.models import Attempt, Checkpoint
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)

OLD = timedelta(days=40)


@pytest.fixture(autouse=True)
def _fresh_counters():
    workflows.CALLS.clear()
    workflows.TOGGLES.clear()
    workflows.PAYMENTS.__init__()


def age(run: Run, by: timedelta = OLD, **fields) -> Run:
    when = timezone.now() - by
    Run.objects.filter(pk=run.pk).update(finished_at=when, updated_at=when, created_at=when, **fields)
    return run


def finished(doorbells, workflow="arithmetic", data=None) -> Run:
    run = Run.objects.start(workflow, data if data is not None else {"a": 1, "b": 2})
    doorbells.drain()
    return run


def exists(*runs) -> list[bool]:
    return [Run.objects.filter(pk=run.pk).exists() for run in runs]


def test_it_deletes_old_finished_runs_with_their_steps_and_keeps_everything_active(doorbells):
    workflows.PAYMENTS.timeouts_left = 2
    paid = Run.objects.start("payment", {"cents": 5})
    exhaust_retries(doorbells, rounds=3)
    approved = finished(doorbells, "approval", {})
    approved.send_signal("approve", {"approved": True}, by="test")
    doorbells.drain()
    failed = finished(doorbells, "malformed", {})
    cancelled = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    cancelled.cancel(by="test")
    dead = age(Run.objects.start("arithmetic", {"a": 2, "b": 2}), status=Status.DEAD)
    old_finished = [age(run) for run in (paid, approved, failed, cancelled)] + [dead]

    running = age(Run.objects.start("arithmetic", {"a": 3, "b": 3}), status=Status.RUNNING)
    waiting = age(finished(doorbells, "approval", {}))
    pending = age(Run.objects.start("arithmetic", {"a": 4, "b": 4}))
    queued = age(Run.objects.start("arithmetic", {"a": 5, "b": 5}), status=Status.QUEUED)
    recent = finished(doorbells)
    kept = [running, waiting, pending, queued, recent]
    assert Run.objects.get(pk=waiting.pk).status == Status.WAITING

    report = prune(timedelta(days=30), by="tester")

    assert report.runs == 5
    assert exists(*old_finished) == [False] * 5
    assert exists(*kept) == [True] * 5
    assert report.rows["checkpoints"] == 1 + 2 + 1  # payment; approval (add, signal); malformed
    assert report.rows["attempts"] == 2 + 1
    assert report.rows["signals"] == 1
    assert not Checkpoint.objects.filter(run_id__in=[r.pk for r in old_finished]).exists()
    assert not Attempt.objects.filter(run_id__in=[r.pk for r in old_finished]).exists()
    assert not Signal.objects.filter(run_id=approved.pk).exists()
    # The audit log outlives the runs it speaks of.
    assert AuditEntry.objects.filter(action="start", run__isnull=True).count() == 5
    entry = AuditEntry.objects.get(action="prune")
    assert (entry.actor_name, entry.details["runs"], entry.details["checkpoints"]) == ("tester", 5, 4)
    assert "deleted 5 runs" in str(report) and "4 checkpoints" in str(report)


def test_it_works_in_batches(doorbells):
    runs = [age(finished(doorbells, "counter", {"steps": 2})) for _ in range(5)]
    report = prune(timedelta(days=30), batch_size=2)
    assert (report.runs, report.batches, report.rows["checkpoints"]) == (5, 3, 10)
    assert exists(*runs) == [False] * 5


def test_it_prunes_only_the_statuses_asked_for(doorbells):
    ok = age(finished(doorbells))
    bad = age(finished(doorbells, "malformed", {}))
    report = prune(timedelta(days=30), statuses=["failed"])
    assert report.runs == 1
    assert exists(ok, bad) == [True, False]


def test_it_counts_without_deleting_in_a_dry_run(doorbells):
    runs = [age(finished(doorbells)) for _ in range(3)]
    report = prune(timedelta(days=30), dry_run=True)
    assert (report.runs, report.rows["checkpoints"], report.batches) == (3, 9, 0)
    assert str(report).startswith("would delete 3 runs")
    assert exists(*runs) == [True] * 3
    assert not AuditEntry.objects.filter(action="prune").exists()


def test_it_refuses_to_prune_runs_that_have_not_finished():
    for status in ("running", "waiting", "pending", "queued"):
        with pytest.raises(ValueError, match="only finished runs can be pruned"):
            prune(timedelta(days=1), statuses=[status])


def test_it_keeps_a_finished_child_while_its_parent_is_active_and_unlinks_children(doorbells):
    parent = age(finished(doorbells, "approval", {}))  # waiting for its signal
    child = age(finished(doorbells), parent=parent)
    finished_parent = age(finished(doorbells))
    active_child = Run.objects.start("arithmetic", {"a": 1, "b": 0}, parent=finished_parent)
    assert list(prunable(timezone.now() - timedelta(days=30))) == [finished_parent]
    prune(timedelta(days=30))
    assert exists(parent, child, finished_parent, active_child) == [True, True, False, True]
    assert Run.objects.get(pk=active_child.pk).parent is None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite locks the whole file")
def test_it_skips_runs_another_transaction_has_locked(doorbells):
    busy, free = age(finished(doorbells)), age(finished(doorbells))
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with transaction.atomic():
            list(Run.objects.select_for_update().filter(pk=busy.pk))
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        report = prune(timedelta(days=30))
    finally:
        release.set()
        holder.join()
    assert report.runs == 1
    assert exists(busy, free) == [True, False]


# --- command line, task and settings -------------------------------------------------------


def runs_command(*args) -> str:
    out = io.StringIO()
    call_command("runs", *args, stdout=out)
    return out.getvalue()


def test_it_prunes_from_the_command_line(doorbells):
    ok, bad = age(finished(doorbells)), age(finished(doorbells, "malformed", {}))
    dry = runs_command("prune", "--older-than", "30d", "--status", "failed", "--dry-run")
    assert dry.startswith("would delete 1 run (failed)")
    assert exists(ok, bad) == [True, True]
    done = runs_command("prune", "--older-than", "4w2d", "--batch-size", "1")
    assert done.startswith("deleted 2 runs (cancelled, dead, failed, succeeded)")
    assert exists(ok, bad) == [False, False]
    assert AuditEntry.objects.get(action="prune").actor_name.startswith("cli:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prune",), "the following arguments are required: --older-than"),
        (("prune", "--older-than", "soon"), "'soon' is not a duration"),
        (("prune", "--older-than", "30d", "--status", "running"), "only finished runs can be pruned"),
        (("prune", "--older-than", "30d", "--batch-size", "0"), "--batch-size must be at least 1"),
    ],
)
def test_it_explains_bad_prune_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        runs_command(*args)


def test_the_prune_task_follows_the_settings(doorbells, settings):
    run = age(finished(doorbells))
    settings.DURABLE_PRUNE_OLDER_THAN = None
    assert "pruning is off" in maintenance.prune()
    assert exists(run) == [True]
    settings.DURABLE_PRUNE_OLDER_THAN = timedelta(days=30)
    settings.DURABLE_PRUNE_STATUSES = ["succeeded"]
    assert maintenance.prune().startswith("deleted 1 run (succeeded)")
    assert exists(run) == [False]
    assert AuditEntry.objects.get(action="prune").actor_name == "beat"


def test_workers_register_the_prune_task():
    app.loader.import_default_modules()
    assert "runs.prune" in app.tasks


def settings_in_subprocess(**env) -> subprocess.CompletedProcess:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "entry = settings.CELERY_BEAT_SCHEDULE.get('durable-prune'); "
        "print(entry and (entry['task'], entry['schedule'].total_seconds()))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        timeout=60,
    )


def test_beat_prunes_only_when_a_setting_asks_for_it():
    assert settings_in_subprocess(DURABLE_PRUNE_OLDER_THAN="").stdout.strip() == "None"
    scheduled = settings_in_subprocess(DURABLE_PRUNE_OLDER_THAN="30d", DURABLE_PRUNE_INTERVAL="6h")
    assert scheduled.stdout.strip() == "('runs.prune', 21600.0)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DURABLE_PRUNE_OLDER_THAN": "a month"}, "DURABLE_PRUNE_OLDER_THAN: 'a month' is not a duration"),
        ({"DURABLE_PRUNE_STATUSES": "succeeded,running"}, "only finished statuses"),
        ({"DURABLE_PRUNE_BATCH_SIZE": "0"}, "DURABLE_PRUNE_BATCH_SIZE='0' must be at least 1"),
    ],
)
def test_it_refuses_a_malformed_prune_setting(env, message):
    result = settings_in_subprocess(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr
