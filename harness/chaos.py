"""The chaos run: real workers killed, frozen and starved, a wiped broker, a restarted database.

Faults are due at points of the runs' progress (the share of all their steps
checkpointed), not of the clock, so each lands while runs are in flight however fast
or slow the machine is; a fault that was asked for and did not happen fails the verdict.
Afterwards every claim is checked from the database alone: no run lost or stuck, no
effect applied twice, no position with two live checkpoints, every output equal to an
undisturbed run's, the CPU-bound step executed once unless a fault hit it, and how
long recovery took after each kind of fault.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from statistics import median

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Count, Sum

from harness import workflows  # noqa: F401  (registers the chaos workflow in this process)
from harness.cluster import Cluster, broker_kind, database_url, forget_queue, process_tree, wipe_broker
from harness.models import Call, SideEffect
from runs.models import FINAL_STATUSES, InvalidOperation, Run, Status, WaitKind, WorkerProcess
from steps.models import Checkpoint

# Where each fault is due, as a share of all the runs' steps checkpointed. Faults strike
# one at a time, but kills go on during the freeze: the freeze comes last of the others so
# that the runs, which keep going meanwhile, cannot finish before a fault still waiting.
WIPE_AT = 0.25
DB_RESTART_AT = 0.35
FREEZE_AT = 0.45
KILLS_FROM, KILLS_TO = 0.05, 0.85  # kills are spread evenly (with jitter) over this span

# Seconds a due kill waits for a worker that is inside a step before taking any worker,
# and a due freeze for a worker inside the slow step's transaction before taking one
# inside any step (a freeze never takes an idle worker: it would prove nothing).
KILL_PATIENCE = 3.0
FREEZE_PATIENCE = 10.0
HURRY_AT = 0.9  # from this share of steps done, a due fault takes whatever victim there is

FAULT_NAMES = {
    "worker": "worker SIGKILL",
    "child": "pool child SIGKILL",
    "freeze": "worker frozen",
    "wipe": "broker wipe",
    "db-restart": "database restart",
}


@dataclass
class ChaosConfig:
    workers: int = 3
    runs: int = 40
    steps: int = 8
    pause: float = 0.3
    variants: int = 4
    kills: int = 8
    wipe_broker: bool = True
    freeze: bool = True
    freeze_seconds: float = 0.0  # 0: the lease timeout + 3 s
    cpu_step: bool = False
    db_restart_cmd: str = ""
    timeout: float = 270.0
    seed: int = 0
    log_dir: Path = field(default_factory=lambda: Path(settings.VAR_DIR) / "chaos")

    @property
    def freeze_for(self) -> float:
        return self.freeze_seconds or settings.DURABLE_LEASE_TIMEOUT + 3.0

    @property
    def burn_seconds(self) -> float:
        """How long the CPU-bound step holds the GIL: twice the lease timeout."""
        return 2 * settings.DURABLE_LEASE_TIMEOUT


@dataclass
class Fault:
    kind: str  # a key of FAULT_NAMES
    due: float  # share of all steps checkpointed from which it is due
    at: float | None = None  # time.time() when it struck; None while it has not
    progress: float | None = None  # share of steps checkpointed when it struck
    seconds: float = 0.0  # how long the freeze or the restart lasted
    pids: list[int] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)  # held by the victim, or in flight (wipe, restart)
    inside: str = ""  # what the victim was doing: a step's name, or "idle"
    error: str = ""

    def describe(self) -> str:
        return f"{FAULT_NAMES[self.kind]} due at {self.due:.0%}" + (f": {self.error}" if self.error else "")


@dataclass
class ChaosReport:
    broker: str = ""
    database: str = ""
    runs: int = 0
    succeeded: int = 0
    lost_or_stuck: list[int] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    doubled_positions: list[str] = field(default_factory=list)
    wrong_outputs: list[int] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    missed_faults: list[str] = field(default_factory=list)
    kills_asked: int = 0
    kills_worker: int = 0
    kills_child: int = 0
    wipe_asked: bool = False
    broker_wiped: bool = False
    db_restart_asked: bool = False
    db_restarted: bool = False
    freeze_asked: bool = False
    frozen: bool = False
    frozen_seconds: float | None = None
    frozen_inside: str = ""
    frozen_runs: list[int] = field(default_factory=list)
    frozen_taken_over: list[int] = field(default_factory=list)  # resumed elsewhere before the thaw
    cpu_step_asked: bool = False
    cpu_runs: int = 0
    cpu_executions: int = 0
    cpu_gil_held: list[float] = field(default_factory=list)  # per checkpointed burn, seconds
    cpu_reexecuted: list[str] = field(default_factory=list)  # re-executions no fault explains
    calls: int = 0
    effects: int = 0
    re_executions: int = 0
    recovery: dict[str, dict] = field(default_factory=dict)  # fault kind -> runs, p50, p95, max
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost_or_stuck
            or self.duplicate_effects
            or self.doubled_positions
            or self.wrong_outputs
            or self.missed_faults
            or self.cpu_reexecuted
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def plan_faults(config: ChaosConfig, rng: random.Random) -> list[Fault]:
    """The faults asked for, in the order they fall due; kills alternate whole worker and pool child."""
    kinds = ["worker", "child"]
    rng.shuffle(kinds)
    plan = [
        Fault(
            kinds[i % 2], round(KILLS_FROM + (KILLS_TO - KILLS_FROM) * (i + rng.random()) / config.kills, 3)
        )
        for i in range(config.kills)
    ]
    if config.wipe_broker:
        plan.append(Fault("wipe", WIPE_AT))
    if config.freeze:
        plan.append(Fault("freeze", FREEZE_AT))
    if config.db_restart_cmd:
        plan.append(Fault("db-restart", DB_RESTART_AT))
    return sorted(plan, key=lambda fault: fault.due)


def missed(plan: list[Fault]) -> list[str]:
    """The faults that were asked for and did not happen (a freeze counts only if it held a run)."""
    return [
        fault.describe()
        for fault in plan
        if fault.at is None or fault.error or (fault.kind == "freeze" and not fault.runs)
    ]


def unexplained_executions(calls: list[tuple[int, float]], faults: list[Fault]) -> int:
    """How many of a step's executions (pid, started_at), in order, were repeated with no fault to explain it.

    An execution may be repeated when a kill or a freeze struck its process, or the
    database restarted (every process loses its connection: the step's own database call,
    or the write of its checkpoint, fails and the step is attempted again), after it
    started and before the next execution began; the last execution is the one that counted.
    """
    struck = [
        fault for fault in faults if fault.at is not None and fault.kind in ("worker", "child", "freeze")
    ]
    restarts = [fault for fault in faults if fault.at is not None and fault.kind == "db-restart"]
    unexplained = 0
    for (pid, started), (_, following) in pairwise(calls):
        killed = any(pid in fault.pids and started < fault.at <= following for fault in struck)
        restarted = any(started < fault.at <= following for fault in restarts)
        if not (killed or restarted):
            unexplained += 1
    return unexplained


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarise(latencies: list[float]) -> dict:
    return {
        "runs": len(latencies),
        "p50": round(median(latencies), 3) if latencies else None,
        "p95": round(percentile(latencies, 0.95), 3) if latencies else None,
        "max": round(max(latencies), 3) if latencies else None,
    }


def retrying(query, attempts: int = 60):
    """Run a harness query, riding out a database restart."""
    for attempt in range(attempts):
        try:
            return query()
        except (OperationalError, InterfaceError):
            connection.close()
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


class ChaosRun:
    def __init__(self, config: ChaosConfig, say=print):
        self.config = config
        self.say = say
        self.random = random.Random(config.seed)
        self.cluster = Cluster(
            config.log_dir / time.strftime("%Y%m%d-%H%M%S"),
            database_url(connection.settings_dict, connection.vendor),
            "harness.workflows",
            DURABLE_LOG_LEVEL="WARNING",
        )
        self.workers: list[subprocess.Popen] = []
        self.plan = plan_faults(config, self.random)
        self.signalled: set[int] = set()
        self.total_steps = 0
        self.trying: Fault | None = None  # the fault being tried, and since when
        self.due_since: float | None = None
        self.frozen: tuple[subprocess.Popen, Fault, float] | None = None  # worker, fault, thaw time
        self.begin = time.time()
        self.report = ChaosReport(broker=broker_kind(), database=connection.vendor)

    # --- driving -------------------------------------------------------------------

    def start_worker(self) -> None:
        name = f"w{len(self.cluster.processes)}"
        self.workers.append(self.cluster.worker(name, pool="prefork", concurrency=1))

    def start(self, seed: int, burn: bool = False) -> Run:
        data = {
            "seed": seed,
            "steps": self.config.steps,
            "pause": self.config.pause,
            # SQLite would stop every other writer while a frozen worker holds a transaction.
            "hold_transaction": connection.vendor != "sqlite",
        }
        if burn:
            data["burn"] = self.config.burn_seconds
        return Run.objects.start("chaos", data, queue=self.cluster.queue, by="chaos")

    def send_signals(self, run_ids: list[int], early: bool = False) -> None:
        waiting = Run.objects.filter(pk__in=run_ids, status=Status.WAITING, wait_kind=WaitKind.SIGNAL)
        targets = run_ids if early else list(waiting.values_list("pk", flat=True))
        for run in Run.objects.filter(pk__in=[r for r in targets if r not in self.signalled]):
            try:
                run.send_signal("go", {"bonus": run.input["seed"] % 10}, by="chaos")
            except InvalidOperation:
                continue
            self.signalled.add(run.pk)

    def unfinished(self, run_ids: list[int]) -> int:
        return Run.objects.filter(pk__in=run_ids).exclude(status__in=list(FINAL_STATUSES)).count()

    def progress(self, run_ids: list[int]) -> float:
        """The share of all the runs' steps checkpointed so far."""
        done = Run.objects.filter(pk__in=run_ids).aggregate(n=Sum("steps_done"))["n"] or 0
        return done / self.total_steps if self.total_steps else 0.0

    def drive(self, run_ids: list[int], deadline: float, faults: list[Fault]) -> None:
        """Until every run is final: answer their waits, and strike each fault once it is due."""
        faults = list(faults)
        while time.monotonic() < deadline:
            retrying(lambda: self.send_signals(run_ids))
            if retrying(lambda: self.unfinished(run_ids)) == 0:
                break
            if self.frozen is not None and time.monotonic() >= self.frozen[2]:
                self.thaw()
            ready = [fault for fault in faults if self.may_strike(fault)]
            if ready:
                progress = retrying(lambda: self.progress(run_ids))
                if ready[0].due <= progress and self.strike(ready[0], progress, run_ids):
                    faults.remove(ready[0])
            freeze_due = bool(ready) and ready[0].kind == "freeze" and self.due_since is not None
            time.sleep(0.03 if freeze_due else 0.1)  # the slow step's window is short
        if self.frozen is not None:
            self.thaw()

    def may_strike(self, fault: Fault) -> bool:
        """One fault at a time, but for kills of the other workers during the freeze."""
        if self.frozen is None:
            return True
        return fault.kind in ("worker", "child") and bool(self.live_workers())

    def strike(self, fault: Fault, progress: float, run_ids: list[int]) -> bool:
        """Try to inflict a due fault; False to try again on the next pass."""
        now = time.monotonic()
        if self.due_since is None or self.trying is not fault:
            self.due_since, self.trying = now, fault
        # Near the end there is no time left to wait for the best moment.
        waited = float("inf") if progress >= HURRY_AT else now - self.due_since
        try:
            if fault.kind in ("worker", "child"):
                struck = self.kill(fault, waited)
            elif fault.kind == "freeze":
                struck = self.freeze(fault, waited, run_ids)
            elif fault.kind == "wipe":
                struck = self.wipe(fault, waited, run_ids)
            else:
                struck = self.restart_database(fault, run_ids)
        except (OperationalError, InterfaceError):
            connection.close()  # the database is restarting: try again
            return False
        if struck:
            fault.progress = round(progress, 3)
            self.due_since = None
        return struck

    def live_workers(self) -> list[subprocess.Popen]:
        """Workers that can be killed or frozen: running, and not frozen already."""
        frozen = self.frozen[0] if self.frozen else None
        return [worker for worker in self.workers if worker.poll() is None and worker is not frozen]

    def trees(self) -> dict[subprocess.Popen, list[int]]:
        return {worker: process_tree(worker.pid) for worker in self.live_workers()}

    def busy_pids(self) -> set[int]:
        """Processes holding a running run's lease right now."""
        running = Run.objects.filter(status=Status.RUNNING).values("lease_owner")
        return set(WorkerProcess.objects.filter(name__in=running).values_list("pid", flat=True))

    def held_by(self, pids: list[int]) -> list[int]:
        names = WorkerProcess.objects.filter(pid__in=pids).values("name")
        return sorted(
            Run.objects.filter(status=Status.RUNNING, lease_owner__in=names).values_list("pk", flat=True)
        )

    def doing(self, pids: list[int], runs: list[int]) -> str:
        """The step a victim was inside, from its latest call for a run it holds."""
        latest = (
            Call.objects.filter(pid__in=pids, run_id__in=runs)
            .order_by("-started_at")
            .values_list("step")
            .first()
        )
        return latest[0] if latest else ("between steps" if runs else "idle")

    def kill(self, fault: Fault, waited: float) -> bool:
        """SIGKILL a whole worker or one pool process, preferring one inside a step."""
        busy, trees = self.busy_pids(), self.trees()
        patient = waited < KILL_PATIENCE
        if fault.kind == "child":
            children = [pid for tree in trees.values() for pid in tree[1:]]
            targets = [pid for pid in children if pid in busy] or ([] if patient else children)
            if not targets:
                return False
            victim, pids = None, [self.random.choice(targets)]
        else:
            holding = [worker for worker, tree in trees.items() if busy & set(tree)]
            victims = holding or ([] if patient else list(trees))
            if not victims:
                return False
            victim = self.random.choice(victims)
            pids = trees[victim]
        fault.pids, fault.runs = pids, self.held_by(pids)
        fault.inside = self.doing(pids, fault.runs)
        fault.at = time.time()
        if victim is None:
            try:
                os.kill(pids[0], signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.report.kills_child += 1
        else:
            self.cluster.kill(victim)
            self.workers.remove(victim)
            self.start_worker()
            self.report.kills_worker += 1
        self.say(f"chaos: SIGKILL {fault.kind} {pids} inside {fault.inside}, holding runs {fault.runs}")
        return True

    def freeze(self, fault: Fault, waited: float, run_ids: list[int]) -> bool:
        """SIGSTOP a whole worker inside a step, preferably inside the slow step's transaction."""
        trees = self.trees()
        window = max(self.config.pause - 0.1, 0.05)
        recent = Call.objects.filter(
            step="slow_effect", run_id__in=run_ids, started_at__gte=time.time() - window
        )
        inside = set(recent.values_list("pid", flat=True))
        victims = [worker for worker, tree in trees.items() if inside & set(tree)]
        if not victims and waited >= FREEZE_PATIENCE:
            busy = self.busy_pids()
            victims = [worker for worker, tree in trees.items() if busy & set(tree)]
        if not victims:
            return False
        victim = self.random.choice(victims)
        self.cluster.freeze(victim)
        fault.at = time.time()
        fault.pids = trees[victim]
        fault.runs = retrying(lambda: self.held_by(fault.pids))
        if not fault.runs:  # it finished its step just before: let it go and look again
            self.cluster.thaw(victim)
            fault.at, fault.pids = None, []
            return False
        fault.inside = retrying(lambda: self.doing(fault.pids, fault.runs))
        self.frozen = (victim, fault, time.monotonic() + self.config.freeze_for)
        self.say(
            f"chaos: SIGSTOP worker {fault.pids} inside {fault.inside}, holding runs {fault.runs}, "
            f"for {self.config.freeze_for:.1f} s"
        )
        return True

    def thaw(self) -> None:
        victim, fault, _ = self.frozen
        frozen_for = time.time() - fault.at
        if retrying(lambda: self.transaction_open_for(frozen_for - 0.5)):
            fault.inside += " (in a transaction)"
        self.cluster.thaw(victim)
        fault.seconds = round(time.time() - fault.at, 2)
        self.frozen = None
        self.say(f"chaos: SIGCONT worker {fault.pids} after {fault.seconds} s")

    @staticmethod
    def transaction_open_for(seconds: float) -> bool:
        """Whether some session has sat in an open transaction that long: the frozen worker's.

        Only PostgreSQL tells; on SQLite the slow step does not hold one.
        """
        if connection.vendor != "postgresql":
            return False
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%%' AND xact_start < now() - make_interval(secs => %s)",
                [seconds],
            )
            return cursor.fetchone()[0] > 0

    def wipe(self, fault: Fault, waited: float, run_ids: list[int]) -> bool:
        """Wipe the broker, preferably while runs wait in the queue: their doorbells are lost."""
        pending = Run.objects.filter(pk__in=run_ids, status=Status.PENDING).values_list("pk", flat=True)
        fault.runs = sorted(pending)
        if not fault.runs and waited < KILL_PATIENCE:
            return False
        fault.at = time.time()
        wipe_broker(self.cluster.queue)
        self.report.broker_wiped = True
        self.say(f"chaos: wiped the broker; the doorbells of runs {fault.runs} are lost")
        return True

    def restart_database(self, fault: Fault, run_ids: list[int]) -> bool:
        in_flight = Run.objects.filter(pk__in=run_ids, status__in=[Status.PENDING, Status.RUNNING])
        fault.runs = sorted(in_flight.values_list("pk", flat=True))
        self.say(f"chaos: restarting the database: {self.config.db_restart_cmd}")
        fault.at = time.time()
        result = subprocess.run(shlex.split(self.config.db_restart_cmd), capture_output=True, text=True)
        fault.seconds = round(time.time() - fault.at, 2)
        connection.close()
        if result.returncode != 0:
            fault.error = f"--db-restart-cmd failed: {(result.stderr or result.stdout).strip()[:300]}"
            self.say(f"chaos: {fault.error}")
        else:
            self.report.db_restarted = True
        return True

    # --- the whole thing -------------------------------------------------------------

    def run(self) -> ChaosReport:
        config = self.config
        begin = time.monotonic()
        deadline = begin + config.timeout
        self.cluster.beat()
        for _ in range(config.workers):
            self.start_worker()
        try:
            references = {seed: self.start(seed) for seed in range(config.variants)}
            self.say(f"chaos: {len(references)} undisturbed reference runs")
            self.drive([r.pk for r in references.values()], deadline, [])
            finished = {seed: Run.objects.get(pk=run.pk) for seed, run in references.items()}
            expected = {seed: run.output for seed, run in finished.items()}

            burning = {i for i in range(config.runs) if config.cpu_step and i % 5 == 0}
            runs = [self.start(i % config.variants, burn=i in burning) for i in range(config.runs)]
            ids = [r.pk for r in runs]
            self.total_steps = sum(
                finished[i % config.variants].steps_done + (i in burning) for i in range(config.runs)
            )
            # A third get their signal before they reach the wait: it must not be lost.
            self.send_signals(ids[::3], early=True)
            self.say(
                f"chaos: {len(ids)} runs started ({len(burning)} with a CPU-bound step); faults due at "
                + ", ".join(f"{fault.kind} {fault.due:.0%}" for fault in self.plan)
            )
            self.drive(ids, deadline, self.plan)
        finally:
            if self.frozen is not None:
                self.thaw()
            self.cluster.stop()
            forget_queue(self.cluster.queue)
        self.check(ids, expected)
        self.report.seconds = round(time.monotonic() - begin, 1)
        return self.report

    # --- checks, from the database alone ------------------------------------------------

    def check(self, ids: list[int], expected: dict[int, dict]) -> None:
        report = self.report
        runs = list(Run.objects.filter(pk__in=ids).only("pk", "status", "input", "output"))
        report.runs = len(runs)
        report.succeeded = sum(run.status == Status.SUCCEEDED for run in runs)
        report.lost_or_stuck = sorted(run.pk for run in runs if run.status != Status.SUCCEEDED)
        report.wrong_outputs = sorted(
            run.pk
            for run in runs
            if run.status == Status.SUCCEEDED and run.output != expected.get(run.input["seed"])
        )
        effects = SideEffect.objects.filter(run_id__in=ids)
        report.effects = effects.count()
        report.duplicate_effects = [
            f"key {row['idempotency_key']} x{row['n']}"
            for row in effects.values("idempotency_key").annotate(n=Count("id")).filter(n__gt=1)
        ] + [
            f"run {row['run_id']} position {row['position']} x{row['n']}"
            for row in effects.values("run_id", "position").annotate(n=Count("id")).filter(n__gt=1)
        ]
        report.doubled_positions = [
            f"run {row['run']} position {row['position']}"
            for row in Checkpoint.objects.live()
            .filter(run_id__in=ids)
            .values("run", "position")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
        ]
        calls = Call.objects.filter(run_id__in=ids)
        report.calls = calls.count()
        report.re_executions = report.calls - calls.values("idempotency_key").distinct().count()
        self.check_faults()
        freeze = next((fault for fault in self.plan if fault.kind == "freeze" and fault.at), None)
        if freeze is not None:
            report.frozen_taken_over = self.taken_over(freeze)
        self.check_cpu_step([run for run in runs if run.input.get("burn")])
        report.recovery = {kind: summarise(values) for kind, values in self.recovery_latencies().items()}

    def check_faults(self) -> None:
        """Which faults struck, and which that were asked for did not (no database needed)."""
        report, config = self.report, self.config
        report.faults = [
            {**asdict(fault), "at": None if fault.at is None else round(fault.at - self.begin, 2)}
            for fault in self.plan
        ]
        report.missed_faults = missed(self.plan)
        report.kills_asked = config.kills
        report.wipe_asked = config.wipe_broker
        report.db_restart_asked = bool(config.db_restart_cmd)
        report.freeze_asked = config.freeze
        freeze = next((fault for fault in self.plan if fault.kind == "freeze" and fault.at), None)
        if freeze is not None:
            report.frozen = bool(freeze.runs)
            report.frozen_seconds = freeze.seconds
            report.frozen_inside = freeze.inside
            report.frozen_runs = freeze.runs

    def taken_over(self, freeze: Fault) -> list[int]:
        """The frozen worker's runs whose next step started in another process while it was frozen."""
        thawed = freeze.at + freeze.seconds
        return [
            run_id
            for run_id in freeze.runs
            if Call.objects.filter(run_id=run_id, started_at__gt=freeze.at, started_at__lt=thawed)
            .exclude(pid__in=freeze.pids)
            .exists()
        ]

    def check_cpu_step(self, burning: list[Run]) -> None:
        """The CPU-bound step ran once per run unless a fault hit it, and really held the GIL."""
        report = self.report
        report.cpu_step_asked = self.config.cpu_step
        if not burning:
            if self.config.cpu_step:
                report.missed_faults.append("CPU-bound step: no run had one")
            return
        ids = [run.pk for run in burning]
        report.cpu_runs = len(ids)
        for run_id in ids:
            calls = list(
                Call.objects.filter(run_id=run_id, step="burn")
                .order_by("started_at")
                .values_list("pid", "started_at")
            )
            report.cpu_executions += len(calls)
            unexplained = unexplained_executions(calls, self.plan)
            if unexplained:
                report.cpu_reexecuted.append(
                    f"run {run_id}: {len(calls)} executions, "
                    f"{unexplained} repeated with no kill, freeze or restart"
                )
        report.cpu_gil_held = sorted(
            checkpoint.meta["gil_held"]
            for checkpoint in Checkpoint.objects.live().filter(run_id__in=ids, name="burn")
            if checkpoint.meta and "gil_held" in checkpoint.meta
        )
        if not report.cpu_gil_held or max(report.cpu_gil_held) < settings.DURABLE_LEASE_TIMEOUT:
            report.missed_faults.append(
                f"CPU-bound step: GIL held at most {max(report.cpu_gil_held, default=0):.2f} s, "
                f"not longer than the lease timeout ({settings.DURABLE_LEASE_TIMEOUT} s)"
            )

    def recovery_latencies(self) -> dict[str, list[float]]:
        """Per fault kind: seconds from the fault to the next step each run it hit started."""
        latencies: dict[str, list[float]] = {}
        for fault in self.plan:
            if fault.at is None:
                continue
            for run_id in fault.runs:
                next_call = (
                    Call.objects.filter(run_id=run_id, started_at__gt=fault.at)
                    .order_by("started_at")
                    .values_list("started_at", flat=True)
                    .first()
                )
                if next_call is not None:
                    latencies.setdefault(fault.kind, []).append(next_call - fault.at)
        return latencies


def render(report: ChaosReport) -> str:
    def seconds(value):
        return "-" if value is None else f"{value:.2f} s"

    def asked(flag: bool, happened: bool, details: str) -> str:
        if not flag:
            return "not asked"
        return f"yes{details}" if happened else "NO"

    rows = [
        ("broker / database", f"{report.broker} / {report.database}"),
        ("runs", report.runs),
        ("succeeded", report.succeeded),
        ("lost or stuck", len(report.lost_or_stuck)),
        ("effects applied twice", len(report.duplicate_effects)),
        ("positions with two live checkpoints", len(report.doubled_positions)),
        ("outputs differing from undisturbed", len(report.wrong_outputs)),
        (
            "workers SIGKILLed / pool children SIGKILLed",
            f"{report.kills_worker} / {report.kills_child} (of {report.kills_asked} asked)",
        ),
        ("broker wiped", asked(report.wipe_asked, report.broker_wiped, "")),
        ("database restarted", asked(report.db_restart_asked, report.db_restarted, "")),
        (
            "worker frozen",
            asked(
                report.freeze_asked,
                report.frozen,
                f", {seconds(report.frozen_seconds)} inside {report.frozen_inside}, "
                f"holding runs {report.frozen_runs}, taken over before the thaw: {report.frozen_taken_over}",
            ),
        ),
        (
            "CPU-bound step: runs / executions / GIL held",
            asked(
                report.cpu_step_asked,
                bool(report.cpu_gil_held),
                f", {report.cpu_runs} / {report.cpu_executions} / "
                f"{seconds(min(report.cpu_gil_held, default=None))} to "
                f"{seconds(max(report.cpu_gil_held, default=None))}",
            ),
        ),
        ("CPU-bound step repeated with no fault", len(report.cpu_reexecuted)),
        (
            "calls / effects / re-executed calls",
            f"{report.calls} / {report.effects} / {report.re_executions}",
        ),
        *(
            (
                f"recovery after {FAULT_NAMES[kind]}: p50 / p95 / max ({figures['runs']} runs)",
                " / ".join(seconds(figures[k]) for k in ("p50", "p95", "max")),
            )
            for kind, figures in sorted(report.recovery.items())
        ),
        ("faults asked for that did not happen", "; ".join(report.missed_faults) or "none"),
        ("wall time", f"{report.seconds} s"),
        ("verdict", "OK" if report.ok else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_json(report: ChaosReport, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.as_dict(), indent=2))
