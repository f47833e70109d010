"""python manage.py chaos: its fault plan and verdict, without starting any worker."""

import random
import time

from harness.chaos import (
    DB_RESTART_AT,
    FREEZE_AT,
    KILLS_FROM,
    KILLS_TO,
    WIPE_AT,
    ChaosConfig,
    ChaosReport,
    ChaosRun,
    Fault,
    missed,
    plan_faults,
    render,
    summarise,
    unexplained_executions,
)
from harness.cluster import broker_kind
from harness.workflows import ThreadProbe, hold_gil


def chaos_run(tmp_path, **config) -> ChaosRun:
    return ChaosRun(ChaosConfig(log_dir=tmp_path, **config), say=lambda line: None)


def strike(fault: Fault, runs=(7,)) -> None:
    fault.at, fault.pids, fault.runs = time.time(), [123], list(runs)


def test_it_schedules_every_fault_by_progress():
    plan = plan_faults(ChaosConfig(kills=6, db_restart_cmd="true"), random.Random(1))

    assert [fault.due for fault in plan] == sorted(fault.due for fault in plan)
    due = {fault.kind: fault.due for fault in plan if fault.kind not in ("worker", "child")}
    assert due == {"wipe": WIPE_AT, "freeze": FREEZE_AT, "db-restart": DB_RESTART_AT}
    kills = [fault for fault in plan if fault.kind in ("worker", "child")]
    assert [fault.kind for fault in kills].count("worker") == 3
    assert all(KILLS_FROM <= fault.due <= KILLS_TO for fault in kills)
    assert kills[0].due < 0.25 and kills[-1].due > 0.6, "kills are spread over the run, not bunched"


def test_it_plans_only_the_faults_asked_for():
    plan = plan_faults(ChaosConfig(kills=0, wipe_broker=False, freeze=False), random.Random(0))

    assert plan == []


def test_it_fails_the_verdict_when_a_fault_asked_for_did_not_happen(tmp_path):
    run = chaos_run(tmp_path, kills=2, db_restart_cmd="true")
    for fault in run.plan:
        if fault.kind in ("worker", "child", "freeze"):
            strike(fault)

    run.check_faults()

    assert run.report.missed_faults == ["broker wipe due at 25%", "database restart due at 35%"]
    assert not run.report.ok
    assert "FAILED" in render(run.report)
    assert "broker wipe due at 25%" in render(run.report)


def test_it_passes_the_verdict_when_every_fault_happened(tmp_path):
    run = chaos_run(tmp_path, kills=2, db_restart_cmd="true")
    for fault in run.plan:
        strike(fault)
    run.report.db_restarted = run.report.broker_wiped = True

    run.check_faults()

    assert run.report.missed_faults == []
    assert run.report.ok
    assert render(run.report).endswith("OK")


def test_it_counts_a_freeze_that_held_no_run_or_a_failed_restart_as_not_happened():
    freeze, restart = Fault("freeze", FREEZE_AT), Fault("db-restart", DB_RESTART_AT)
    strike(freeze, runs=[])
    strike(restart)
    restart.error = "--db-restart-cmd failed: no such cluster"

    assert missed([freeze, restart]) == [
        "worker frozen due at 45%",
        "database restart due at 35%: --db-restart-cmd failed: no such cluster",
    ]


def test_it_excuses_a_repeated_step_only_when_a_kill_freeze_or_restart_hit_it():
    kill = Fault("child", 0.3, at=105.0, pids=[11])
    wipe = Fault("wipe", 0.25, at=112.0, pids=[])

    # pid 11 was killed mid-step; pid 12's execution was repeated with nothing to explain it.
    calls = [(11, 100.0), (12, 110.0), (13, 115.0)]

    assert unexplained_executions(calls, [kill, wipe]) == 1
    assert unexplained_executions(calls[:2], [kill]) == 0
    assert unexplained_executions([(11, 100.0)], []) == 0
    assert unexplained_executions([(11, 106.0), (12, 110.0)], [kill]) == 1, "the kill came before it"
    # A database restart strikes every process: a step running through it may run again.
    restart = Fault("db-restart", 0.35, at=111.0, pids=[])
    assert unexplained_executions(calls, [kill, restart]) == 0
    assert unexplained_executions([(12, 112.0), (13, 115.0)], [restart]) == 1, "the restart came before it"


def test_it_fails_the_verdict_when_the_cpu_bound_step_was_repeated():
    report = ChaosReport(cpu_step_asked=True, cpu_runs=1, cpu_gil_held=[4.1], cpu_reexecuted=["run 3: 2"])

    assert not report.ok


def test_it_summarises_recovery_per_fault_kind():
    assert summarise([0.4, 0.2, 1.0, 0.3]) == {"runs": 4, "p50": 0.35, "p95": 1.0, "max": 1.0}
    assert summarise([]) == {"runs": 0, "p50": None, "p95": None, "max": None}

    report = ChaosReport(recovery={"child": summarise([0.3]), "freeze": summarise([2.5])})
    text = render(report)
    assert "recovery after pool child SIGKILL: p50 / p95 / max (1 runs)  0.30 s / 0.30 s / 0.30 s" in text
    assert "recovery after worker frozen" in text


def test_it_holds_the_gil_for_the_whole_cpu_bound_step():
    with ThreadProbe() as probe:
        spent = hold_gil(0.3)

    assert spent >= 0.2
    assert probe.longest_gap >= spent * 0.9, "another thread of the process ran during the step"


def test_it_names_the_broker_kind():
    assert broker_kind("amqp://guest:guest@127.0.0.1:5672//") == "amqp"
    assert broker_kind("pyamqp://127.0.0.1//") == "amqp"
    assert broker_kind("rediss://127.0.0.1:6379/4") == "redis"
    assert broker_kind("filesystem://") == "filesystem"
