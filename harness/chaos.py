"""The chaos run: real workers, killed at random, a wiped broker, a restarted database.

Afterwards every claim is checked from the database alone: no run lost or stuck,
no effect applied twice, no position with two live checkpoints, every output equal
to an undisturbed run's, and how long recovery took.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from django.conf import settings
from django.db import OperationalError, connection
from django.db.models import Count

from harness import workflows  # noqa: F401  (registers the chaos workflow in this process)
from harness.cluster import Cluster, database_url, process_tree, wipe_broker
from harness.models import Call, SideEffect
from runs.models import FINAL_STATUSES, InvalidOperation, Run, Status, WaitKind, WorkerProcess
from steps.models import Checkpoint


@dataclass
class ChaosConfig:
    workers: int = 3
    runs: int = 40
    steps: int = 8
    pause: float = 0.3
    variants: int = 4
    kill_interval: tuple[float, float] = (2.0, 5.0)
    timeout: float = 270.0
    wipe_broker: bool = True
    db_restart_cmd: str = ""
    seed: int = 0
    log_dir: Path = field(default_factory=lambda: Path(settings.VAR_DIR) / "chaos")


@dataclass
class Kill:
    at: float
    kind: str  # "worker" (the whole process group) or "child" (one prefork pool process)
    pids: list[int]
    leased_runs: list[int]


@dataclass
class ChaosReport:
    runs: int = 0
    succeeded: int = 0
    lost_or_stuck: list[int] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    doubled_positions: list[str] = field(default_factory=list)
    wrong_outputs: list[int] = field(default_factory=list)
    kills_worker: int = 0
    kills_child: int = 0
    broker_wiped: bool = False
    db_restarted: bool = False
    calls: int = 0
    effects: int = 0
    re_executions: int = 0
    recovery_p50: float | None = None
    recovery_p95: float | None = None
    recovery_max: float | None = None
    recoveries_measured: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost_or_stuck or self.duplicate_effects or self.doubled_positions or self.wrong_outputs
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def retrying(query, attempts: int = 60):
    """Run a harness query, riding out a database restart."""
    for attempt in range(attempts):
        try:
            return query()
        except OperationalError:
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
        self.kills: list[Kill] = []
        self.signalled: set[int] = set()
        self.report = ChaosReport()

    # --- driving -------------------------------------------------------------------

    def start_worker(self) -> None:
        name = f"w{len(self.cluster.processes)}"
        self.workers.append(self.cluster.worker(name, pool="prefork", concurrency=1))

    def start(self, seed: int) -> Run:
        data = {"seed": seed, "steps": self.config.steps, "pause": self.config.pause}
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

    def wait_until_final(self, run_ids: list[int], deadline: float, chaos: bool) -> None:
        next_kill = time.monotonic() + self.random.uniform(*self.config.kill_interval)
        wiped = restarted = not chaos
        started = time.monotonic()
        while time.monotonic() < deadline:
            retrying(lambda: self.send_signals(run_ids))
            unfinished = retrying(
                lambda: Run.objects.filter(pk__in=run_ids).exclude(status__in=list(FINAL_STATUSES)).count()
            )
            if unfinished == 0:
                return
            # Prefer a moment when some worker is inside a step, waiting up to a few
            # seconds for one: a kill between steps proves less.
            due = chaos and time.monotonic() >= next_kill
            if due and (self.busy_pids() or time.monotonic() >= next_kill + 3):
                self.kill_something()
                next_kill = time.monotonic() + self.random.uniform(*self.config.kill_interval)
            elapsed = time.monotonic() - started
            if not wiped and elapsed > 6 and self.config.wipe_broker:
                self.say("chaos: wiping the broker")
                wipe_broker(self.cluster.queue)
                self.report.broker_wiped = wiped = True
            if not restarted and elapsed > 12:
                restarted = True
                if self.config.db_restart_cmd:
                    self.restart_database()
            time.sleep(0.1)

    def busy_pids(self) -> set[int]:
        """Processes holding a running run's lease right now."""
        running = Run.objects.filter(status=Status.RUNNING).values("lease_owner")
        return set(
            retrying(
                lambda: list(WorkerProcess.objects.filter(name__in=running).values_list("pid", flat=True))
            )
        )

    def kill_something(self) -> None:
        """SIGKILL a whole worker or one of its pool processes, preferring one that holds a run."""
        busy = self.busy_pids()
        trees = {worker: process_tree(worker.pid) for worker in self.workers if worker.poll() is None}
        holding = [worker for worker, tree in trees.items() if busy & set(tree)]
        victim = self.random.choice(holding or list(trees))
        tree = trees[victim]
        if len(tree) > 1 and self.random.random() < 0.5:
            kind, pids = "child", [self.random.choice([pid for pid in tree[1:] if pid in busy] or tree[1:])]
        else:
            kind, pids = "worker", tree
        names = retrying(
            lambda: list(WorkerProcess.objects.filter(pid__in=pids).values_list("name", flat=True))
        )
        leased = retrying(
            lambda: list(
                Run.objects.filter(status=Status.RUNNING, lease_owner__in=names).values_list("pk", flat=True)
            )
        )
        at = time.time()
        if kind == "worker":
            self.cluster.kill(victim)
            self.workers.remove(victim)
            self.start_worker()
            self.report.kills_worker += 1
        else:
            subprocess.run(["kill", "-9", str(pids[0])], check=False)
            self.report.kills_child += 1
        self.kills.append(Kill(at=at, kind=kind, pids=pids, leased_runs=leased))
        self.say(f"chaos: SIGKILL {kind} {pids} holding runs {leased}")

    def restart_database(self) -> None:
        self.say(f"chaos: restarting the database: {self.config.db_restart_cmd}")
        result = subprocess.run(shlex.split(self.config.db_restart_cmd), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"--db-restart-cmd failed: {result.stderr.strip() or result.stdout.strip()}")
        connection.close()
        self.report.db_restarted = True

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
            self.wait_until_final([r.pk for r in references.values()], deadline, chaos=False)
            expected = {seed: Run.objects.get(pk=run.pk).output for seed, run in references.items()}

            runs = [self.start(i % config.variants) for i in range(config.runs)]
            ids = [r.pk for r in runs]
            # A third get their signal before they reach the wait: it must not be lost.
            self.send_signals(ids[::3], early=True)
            self.say(f"chaos: {len(ids)} runs started; killing workers every {config.kill_interval} s")
            self.wait_until_final(ids, deadline, chaos=True)
        finally:
            self.cluster.stop()
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
        latencies = []
        for kill in self.kills:
            for run_id in kill.leased_runs:
                next_call = (
                    Call.objects.filter(run_id=run_id, started_at__gt=kill.at)
                    .order_by("started_at")
                    .values_list("started_at", flat=True)
                    .first()
                )
                if next_call is not None:
                    latencies.append(next_call - kill.at)
        report.recoveries_measured = len(latencies)
        report.recovery_p50 = round(median(latencies), 3) if latencies else None
        report.recovery_p95 = round(percentile(latencies, 0.95), 3) if latencies else None
        report.recovery_max = round(max(latencies), 3) if latencies else None


def render(report: ChaosReport) -> str:
    def seconds(value):
        return "-" if value is None else f"{value:.2f} s"

    rows = [
        ("runs", report.runs),
        ("succeeded", report.succeeded),
        ("lost or stuck", len(report.lost_or_stuck)),
        ("effects applied twice", len(report.duplicate_effects)),
        ("positions with two live checkpoints", len(report.doubled_positions)),
        ("outputs differing from undisturbed", len(report.wrong_outputs)),
        ("workers SIGKILLed / pool children SIGKILLed", f"{report.kills_worker} / {report.kills_child}"),
        ("broker wiped", "yes" if report.broker_wiped else "no"),
        ("database restarted", "yes" if report.db_restarted else "no"),
        (
            "calls / effects / re-executed calls",
            f"{report.calls} / {report.effects} / {report.re_executions}",
        ),
        (
            f"recovery p50 / p95 / max ({report.recoveries_measured} runs)",
            " / ".join(seconds(v) for v in (report.recovery_p50, report.recovery_p95, report.recovery_max)),
        ),
        ("wall time", f"{report.seconds} s"),
        ("verdict", "OK" if report.ok else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_json(report: ChaosReport, path: str) -> None:
    Path(path).write_text(json.dumps(report.as_dict(), indent=2))
