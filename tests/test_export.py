"""Exporting runs and replaying them against the current code, with no side effect."""

import copy
import io
import json
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from runs.export import ExportError, ReplayContext, export_run, load_export, replay
from runs.models import Run, Status
from runs.recovery import sweep
from runs.testing import assert_replays, exports_in
from runs.workflow import step, workflow
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)


@step
def fetch(url):
    workflows.CALLS["fetch"] += 1
    return f"page at {url}"


@workflow("export_greedy_catcher")
def greedy_catcher(ctx, data):
    """Catches everything, even replay's own stop."""
    try:
        first = ctx.step(workflows.add, 1, 1)
        return {"first": first, "second": ctx.step(workflows.add, first, 1)}
    except BaseException:
        return "swallowed"


@workflow("export_fan_out")
def fan_out(ctx, data):
    pages = ctx.map(fetch, data["urls"])
    summary = ctx.child("arithmetic", {"a": len(pages), "b": 0})
    return {"pages": pages, "summary": summary}


def run_of(doorbells, workflow_name, data) -> Run:
    run = Run.objects.start(workflow_name, data)
    doorbells.drain()
    run.refresh_from_db()
    return run


def replay_offline(document, django_db_blocker):
    """Replay with the database blocked: any query would raise."""
    calls_before = sum(workflows.CALLS.values())
    with django_db_blocker.block():
        report = replay(copy.deepcopy(document))
    assert sum(workflows.CALLS.values()) == calls_before, "replay must not call step functions"
    return report


# --- export ------------------------------------------------------------------------------


def test_it_exports_input_checkpoints_attempts_and_the_code_version(doorbells):
    workflows.PAYMENTS.timeouts_left = 2
    run = Run.objects.start("payment", {"cents": 250})
    exhaust_retries(doorbells, rounds=3)
    run.refresh_from_db()
    run.retry_from(0, by="test", reason="charge again")
    doorbells.drain()
    run.refresh_from_db()

    document = json.loads(json.dumps(export_run(run)))  # survives a trip through a file
    assert document["format"] == "durable-run-export"
    assert document["run"]["workflow"] == "payment"
    assert document["run"]["input"] == {"cents": 250}
    assert document["run"]["code_version"] == run.code_version == document["deployed_version"]
    assert "lease_token" not in document["run"]
    old, new = document["checkpoints"]
    assert old["superseded_at"] is not None and new["superseded_at"] is None
    assert [a["number"] for a in old["failed_attempts"]] == [1, 2]
    assert old["failed_attempts"][0]["error_type"] == "TimeoutError"
    assert new["failed_attempts"] == [] and new["epoch"] == 1
    assert document["open_attempts"] == []


def test_it_exports_signals(doorbells):
    run = run_of(doorbells, "approval", {})
    run.send_signal("approve", {"approved": True, "by": "ann"}, by="test")
    doorbells.drain()
    document = export_run(Run.objects.get(pk=run.pk))
    [signal] = document["signals"]
    assert (signal["name"], signal["payload"]["by"], signal["consumed_position"]) == ("approve", "ann", 1)


# --- replay ------------------------------------------------------------------------------


def test_it_replays_a_succeeded_run_cleanly_without_database_or_step_functions(doorbells, django_db_blocker):
    run = run_of(doorbells, "agent_loop", {"budget": 3})
    report = replay_offline(export_run(run), django_db_blocker)
    assert report.outcome == "clean", report
    assert report.ok
    assert report.replayed == report.recorded_steps == 6
    assert report.output == run.output
    assert "replays cleanly" in str(report)


def test_it_reports_where_changed_code_diverges(doorbells, django_db_blocker):
    run = run_of(doorbells, "branching", {})
    document = export_run(run)
    workflows.TOGGLES["branch"] = "double"  # the code now calls another step at position 1
    report = replay_offline(document, django_db_blocker)
    assert report.outcome == "diverged"
    assert not report.ok
    assert (report.position, report.expected, report.called) == (1, "maybe_crash", "double")
    assert "at position 1 the code now calls 'double' but the recorded step there is 'maybe_crash'" in str(
        report
    )


def test_it_reports_code_that_stops_before_the_recorded_steps_end(doorbells, django_db_blocker):
    document = export_run(run_of(doorbells, "counter", {"steps": 4}))
    document["run"]["input"] = {"steps": 2}
    report = replay_offline(document, django_db_blocker)
    assert (report.outcome, report.position, report.expected, report.called) == (
        "diverged",
        2,
        "add",
        "(return)",
    )


def test_it_tells_which_step_would_execute_next(doorbells, django_db_blocker):
    document = export_run(run_of(doorbells, "counter", {"steps": 3}))
    document["run"]["input"] = {"steps": 5}
    # A finished run that the code would now make longer has diverged...
    finished = replay_offline(document, django_db_blocker)
    assert (finished.outcome, finished.position, finished.expected) == ("diverged", 3, "(end of run)")
    # ...but a run still in flight simply goes on from there.
    document["run"]["status"] = Status.DEAD
    report = replay_offline(document, django_db_blocker)
    assert report.outcome == "continues" and report.ok
    assert (report.position, report.called) == (3, "add")
    assert "would execute step 'add' at position 3 next" in report.message


def test_it_stops_at_a_step_waiting_for_its_retry(doorbells, django_db_blocker):
    workflows.PAYMENTS.timeouts_left = 1
    run = run_of(doorbells, "payment", {"cents": 100})
    assert run.status == Status.WAITING
    document = export_run(run)
    assert [a["number"] for a in document["open_attempts"]] == [1]
    report = replay_offline(document, django_db_blocker)
    assert (report.outcome, report.position, report.called) == ("continues", 0, "charge")


def test_it_replays_sleeps_and_signal_waits_like_the_engine(doorbells, django_db_blocker):
    sleeping = run_of(doorbells, "sleeper", {"seconds": 3600})
    report = replay_offline(export_run(sleeping), django_db_blocker)
    assert (report.outcome, report.position, report.called) == ("continues", 1, "sleep")
    assert "sleeps at position 1 until" in report.message

    with time_machine.travel(timezone.now() + timedelta(hours=2), tick=False):
        sweep()
        doorbells.drain()
        woken = export_run(Run.objects.get(pk=sleeping.pk))
    assert woken["run"]["status"] == Status.SUCCEEDED
    assert replay_offline(woken, django_db_blocker).outcome == "clean"

    waiting = run_of(doorbells, "approval", {})
    report = replay_offline(export_run(waiting), django_db_blocker)
    assert report.outcome == "continues"
    assert "would wait for signal 'approve' at position 1 next" in report.message

    waiting.send_signal("approve", {"approved": True, "by": "ann"}, by="test")
    doorbells.drain()
    report = replay_offline(export_run(Run.objects.get(pk=waiting.pk)), django_db_blocker)
    assert report.outcome == "clean"
    assert report.output == {"plan": 42, "outcome": "done", "by": "ann"}


def test_it_raises_recorded_failures_again_for_workflow_code_to_catch(doorbells, django_db_blocker):
    caught = run_of(doorbells, "refusal", {})
    report = replay_offline(export_run(caught), django_db_blocker)
    assert report.outcome == "clean"
    assert report.output == {"caught": "PermissionError", "fallback": 2}

    failed = run_of(doorbells, "malformed", {})
    report = replay_offline(export_run(failed), django_db_blocker)
    assert report.outcome == "clean"
    assert "reproduces the recorded failure: NonRetryableError: card number is malformed" in report.message


def test_it_says_when_the_code_ends_differently(doorbells, django_db_blocker):
    document = export_run(run_of(doorbells, "arithmetic", {"a": 1, "b": 2}))
    document["run"]["output"] = {"total": 99}
    report = replay_offline(document, django_db_blocker)
    assert report.outcome == "differs" and not report.ok
    assert "but the run returned" in report.message


def test_it_replays_parallel_groups_and_child_runs_from_the_file(django_db_blocker):
    document = {
        "format": "durable-run-export",
        "format_version": 1,
        "exported_at": timezone.now().isoformat(),
        "run": {
            "id": 7,
            "workflow": "export_fan_out",
            "status": "succeeded",
            "code_version": "x",
            "input": {},
        },
        "checkpoints": [
            {"position": 0, "name": "parallel:2", "status": "succeeded", "output": ["a", "b"]},
            {"position": 1, "name": "child:arithmetic", "status": "succeeded", "output": {"total": 2}},
        ],
    }
    document["run"]["input"] = {"urls": ["u1", "u2"]}
    document["run"]["output"] = {"pages": ["a", "b"], "summary": {"total": 2}}
    assert replay_offline(document, django_db_blocker).outcome == "clean"

    document["run"]["input"] = {"urls": ["u1", "u2", "u3"]}
    report = replay_offline(document, django_db_blocker)
    assert (report.outcome, report.expected, report.called) == ("diverged", "parallel:2", "parallel:3")

    del document["checkpoints"][1]
    document["run"].update(status="running", input={"urls": ["u1", "u2"]})
    report = replay_offline(document, django_db_blocker)
    assert report.outcome == "continues"
    assert "would start a child run of 'arithmetic' at position 1 next" in report.message


def test_it_is_not_fooled_by_workflow_code_that_catches_everything(doorbells, django_db_blocker):
    run = Run.objects.start("export_greedy_catcher", {})
    document = export_run(run)  # nothing recorded yet
    report = replay_offline(document, django_db_blocker)
    assert (report.outcome, report.position, report.called) == ("continues", 0, "add")


def test_it_reports_a_version_change_and_a_workflow_that_is_gone(doorbells, django_db_blocker):
    document = export_run(run_of(doorbells, "arithmetic", {"a": 1, "b": 2}))
    document["run"]["code_version"] = "src-000000000000"
    report = replay_offline(document, django_db_blocker)
    assert report.version_changed and report.outcome == "clean"
    assert "deployed now: src-" in str(report)

    document["run"]["workflow"] = "retired"
    report = replay_offline(document, django_db_blocker)
    assert report.outcome == "error"
    assert "No workflow named 'retired'" in report.message


def test_the_replay_context_reads_like_the_run_context():
    document = {"run": {"id": 3, "input": {"x": 1}}, "checkpoints": [], "signals": []}
    ctx = ReplayContext(document)
    assert (ctx.run_id, ctx.input, ctx.position) == (3, {"x": 1}, 0)
    with pytest.raises(AttributeError, match=r"replay does not support ctx\.teleport"):
        ctx.teleport()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"format": "something-else"}', "not a run export"),
        ('{"format": "durable-run-export", "format_version": 99}', "newer than this code reads"),
        ('{"format": "durable-run-export", "format_version": 1, "run": {}}', 'no "run" with a "workflow"'),
        (
            '{"format": "durable-run-export", "format_version": 1, "run": {"workflow": "a"}, '
            '"checkpoints": [{"position": "one"}]}',
            "checkpoint 0 needs",
        ),
    ],
)
def test_it_refuses_a_file_that_is_not_a_usable_export(tmp_path, content, message):
    path = tmp_path / "run.json"
    path.write_text(content)
    with pytest.raises(ExportError, match=message):
        load_export(path)


# --- command line -----------------------------------------------------------------------


def runs_command(*args) -> str:
    out = io.StringIO()
    call_command("runs", *args, stdout=out)
    return out.getvalue()


def test_it_exports_and_replays_from_the_command_line(doorbells, tmp_path):
    run = run_of(doorbells, "branching", {})
    path = tmp_path / "run.json"
    assert runs_command("export", str(run.pk), "--output", str(path)) == f"exported run {run.pk} to {path}\n"
    assert json.loads(runs_command("export", str(run.pk)))["run"]["id"] == run.pk

    replayed = runs_command("replay", str(path))
    assert f"run {run.pk} of 'branching' (succeeded)" in replayed
    assert "CLEAN: replays cleanly" in replayed

    workflows.TOGGLES["branch"] = "double"
    with pytest.raises(CommandError, match="not safe for this run: the current code calls a different step"):
        runs_command("replay", str(path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "999999"), "No run with id 999999"),
        (("replay", "/nonexistent/run.json"), "cannot read /nonexistent/run.json"),
        (("export", "1", "--output", "/nonexistent/dir/run.json"), "cannot write"),
    ],
)
def test_it_explains_bad_export_and_replay_arguments(doorbells, args, message):
    run_of(doorbells, "arithmetic", {"a": 1, "b": 1})
    if args[0] == "export" and args[1] == "1":
        args = ("export", str(Run.objects.get().pk), *args[2:])
    with pytest.raises(CommandError, match=message):
        runs_command(*args)


# --- the pytest helper -------------------------------------------------------------------


def test_the_pytest_helper_turns_an_export_into_a_regression_test(doorbells, tmp_path):
    path = tmp_path / "branching.json"
    path.write_text(json.dumps(export_run(run_of(doorbells, "branching", {}))))
    report = assert_replays(path, outcome="clean")
    assert report.output == 4  # maybe_crash(add(1, 2))

    workflows.TOGGLES["branch"] = "double"
    with pytest.raises(pytest.fail.Exception, match=r"(?s)expected a safe replay.*DIVERGED: at position 1"):
        assert_replays(path)

    mark = exports_in(tmp_path)
    assert mark.args == ("export", [path])
    assert mark.kwargs["ids"] == ["branching"]
