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
from runs.retention import PRUNABLE_STATUSES, prunable, prune
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

    report = prune(timedelta(days=30), statuses=PRUNABLE_STATUSES, by="tester")

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
    assert entry.details["by_status"] == {"succeeded": 2, "failed": 1, "cancelled": 1, "dead": 1}
    assert "deleted 5 runs" in str(report) and "4 checkpoints" in str(report)
    assert "kept, unlinked: 7 audit entries" in str(report)  # five starts, a cancel, a signal


def test_it_keeps_failed_and_dead_runs_unless_they_are_asked_for_by_name(doorbells):
    ok = age(finished(doorbells))
    cancelled = Run.objects.start("arithmetic", {"a": 1, "b": 1})
    cancelled.cancel(by="test")
    age(cancelled)
    failed = age(finished(doorbells, "malformed", {}))
    dead = age(Run.objects.start("arithmetic", {"a": 2, "b": 2}), status=Status.DEAD)

    report = prune(timedelta(days=30))
    assert (report.statuses, report.runs) == (["cancelled", "succeeded"], 2)
    assert exists(ok, cancelled, failed, dead) == [False, False, True, True]

    assert prune(timedelta(days=30), statuses=["dead"]).runs == 1
    assert exists(failed, dead) == [True, False]


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
    for run in runs:
        run.refresh_from_db()
    report = prune(timedelta(days=30), dry_run=True, shown=2)
    assert (report.runs, report.rows["checkpoints"], report.batches) == (3, 9, 0)
    assert str(report).startswith("would delete 3 runs")
    assert [run.id for run in report.first] == [runs[0].pk, runs[1].pk]
    assert report.listing().splitlines() == [
        "succeeded: 3",
        "runs (the first 2):",
        *(f"  {run.pk}  arithmetic  succeeded  {run.finished_at:%Y-%m-%d %H:%M}" for run in runs[:2]),
    ]
    assert exists(*runs) == [True] * 3
    assert not AuditEntry.objects.filter(action="prune").exists()


def test_a_dry_run_names_exactly_what_the_prune_then_deletes(doorbells):
    waiting_parent = age(finished(doorbells, "approval", {}))
    taken = [
        age(finished(doorbells)),
        age(finished(doorbells, "counter", {"steps": 3})),
        age(finished(doorbells, "malformed", {})),
        age(Run.objects.start("arithmetic", {"a": 2, "b": 2}), status=Status.DEAD),
        age(finished(doorbells)),
    ]
    kept = [
        finished(doorbells),  # too recent
        age(finished(doorbells), parent=waiting_parent),  # its parent still waits
        age(Run.objects.start("arithmetic", {"a": 3, "b": 3}), status=Status.RUNNING),
        waiting_parent,
    ]
    Run.objects.filter(pk=taken[0].pk).update(parent=taken[1])
    statuses = ["dead", "failed", "succeeded"]
    before = set(Run.objects.values_list("pk", flat=True))

    dry = prune(timedelta(days=30), statuses=statuses, dry_run=True, shown=100)
    assert exists(*taken) == [True] * 5
    real = prune(timedelta(days=30), statuses=statuses, batch_size=2, shown=100)

    gone = before - set(Run.objects.values_list("pk", flat=True))
    assert [run.id for run in dry.first] == [run.id for run in real.first] == sorted(gone)
    assert gone == {run.pk for run in taken}
    assert dry.first == real.first  # workflows, statuses and finishing times too
    assert dry.by_status == real.by_status == {"succeeded": 3, "failed": 1, "dead": 1}
    assert (dry.runs, dry.rows, dry.unlinked) == (real.runs, real.rows, real.unlinked)
    assert exists(*kept) == [True] * 4


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
    dead = age(Run.objects.start("arithmetic", {"a": 2, "b": 2}), status=Status.DEAD)
    dry = runs_command("prune", "--older-than", "30d", "--status", "dead", "--dry-run")
    assert dry.startswith("would delete 1 run (dead)")
    assert f"\ndead: 1\nruns:\n  {dead.pk}  arithmetic  dead  " in dry
    assert exists(ok, bad, dead) == [True, True, True]
    done = runs_command("prune", "--older-than", "4w2d", "--batch-size", "1")
    assert done.startswith("deleted 1 run (cancelled, succeeded)")
    assert exists(ok, bad, dead) == [False, True, True]
    everything = ["--status", "failed", "--status", "dead", "--status", "succeeded", "--show", "0"]
    done = runs_command("prune", "--older-than", "30d", *everything)
    assert done.startswith("deleted 2 runs (dead, failed, succeeded)")
    assert done.splitlines()[1:] == ["dead: 1", "failed: 1"]
    assert exists(bad, dead) == [False, False]
    assert AuditEntry.objects.filter(action="prune").first().actor_name.startswith("cli:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prune",), "the following arguments are required: --older-than"),
        (("prune", "--older-than", "soon"), "'soon' is not a duration"),
        (("prune", "--older-than", "30d", "--status", "running"), "only finished runs can be pruned"),
        (("prune", "--older-than", "30d", "--batch-size", "0"), "--batch-size must be at least 1"),
        (("prune", "--older-than", "30d", "--show", "-1"), "--show must be 0 or more"),
    ],
)
def test_it_explains_bad_prune_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        runs_command(*args)


def test_the_prune_task_follows_the_settings(doorbells, settings):
    run, failed = age(finished(doorbells)), age(finished(doorbells, "malformed", {}))
    settings.DURABLE_PRUNE_OLDER_THAN = None
    assert "pruning is off" in maintenance.prune()
    assert exists(run, failed) == [True, True]
    settings.DURABLE_PRUNE_OLDER_THAN = timedelta(days=30)
    assert settings.DURABLE_PRUNE_STATUSES == ["succeeded", "cancelled"]  # the default
    assert maintenance.prune().startswith("deleted 1 run (cancelled, succeeded)")
    assert exists(run, failed) == [False, True]
    assert AuditEntry.objects.get(action="prune").actor_name == "beat"
    settings.DURABLE_PRUNE_STATUSES = ["failed"]
    assert maintenance.prune().startswith("deleted 1 run (failed)")
    assert exists(failed) == [False]


def test_workers_register_the_prune_task():
    app.loader.import_default_modules()
    assert "runs.prune" in app.tasks


BEAT_PRUNE_ENTRY = (
    "import django; django.setup(); from django.conf import settings; "
    "entry = settings.CELERY_BEAT_SCHEDULE.get('durable-prune'); "
    "print(entry and (entry['task'], entry['schedule'].total_seconds()))"
)


def settings_in_subprocess(code: str = BEAT_PRUNE_ENTRY, **env) -> subprocess.CompletedProcess:
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
