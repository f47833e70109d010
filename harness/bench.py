"""Benchmarks: every figure is measured against a baseline taken in the same run.

The measurements run in a scratch database (a copy of the configured one's kind,
on the same server), so seeding a million runs never touches real data.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from statistics import median

from celery import chain
from django.conf import settings
from django.db import connection, connections
from django.db.models import Max
from django.test import Client
from django.test.utils import CaptureQueriesContext

from harness import workflows  # noqa: F401  (registers the bench workflows in this process)
from harness.cluster import Cluster, database_url, process_tree
from harness.models import Call, FloorRow
from runs.models import Run, Status

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("throughput", "checkpoint_bytes", "floor", "recovery", "memory", "pages")


@dataclass
class BenchConfig:
    processes: int = 2  # Celery's default: one per CPU on this 2-core machine
    # Throughput shapes, (runs, steps each): many short runs, and a few long ones.
    shapes: tuple[tuple[int, int], ...] = ((500, 10), (20, 100))
    floor_rows: int = 2000
    recovery_samples: int = 5
    memory_runs: tuple[int, int] = (1000, 10000)
    page_sizes: tuple[int, ...] = (10_000,)
    page_requests: int = 20
    detail_steps: int = 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def wait_until(condition, timeout: float, what: str, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise RuntimeError(f"bench: timed out waiting for {what}\n{cluster.logs() if cluster else ''}")


class Bench:
    def __init__(self, config: BenchConfig, log_dir: Path, say=print):
        self.config = config
        self.log_dir = log_dir
        self.say = say
        self.url = database_url(connection.settings_dict, connection.vendor)
        self.figures: dict = {}

    def cluster(self, name: str) -> Cluster:
        return Cluster(self.log_dir / name, self.url, "harness.workflows", DURABLE_LOG_LEVEL="WARNING")

    def finished(self, ids: list[int]) -> bool:
        return Run.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == len(ids)

    # --- throughput ----------------------------------------------------------------

    def throughput(self) -> None:
        """Durable runs in our worker against plain Celery chains in a stock worker.

        Two shapes (many short runs, few long ones); the lower ratio is the headline.
        """
        durable, plain = {}, {}
        cluster = self.cluster("throughput")
        cluster.worker("w", pool="prefork", concurrency=self.config.processes)
        try:
            self.durable_runs(cluster, 4, 5)  # warm the worker up
            for shape in self.config.shapes:
                durable[shape] = self.durable_runs(cluster, *shape)
        finally:
            cluster.stop()
        baseline = self.cluster("baseline")
        baseline.stock_worker("stock", concurrency=self.config.processes)
        try:
            self.plain_chains(baseline, 2, 5)  # warm the plain path too
            for shape in self.config.shapes:
                begin = time.time()
                plain[shape] = shape[0] * shape[1] / (self.plain_chains(baseline, *shape) - begin)
        finally:
            baseline.stop()
        ratios = {}
        for runs, steps in self.config.shapes:
            name = f"{runs}x{steps}"
            self.figures[f"durable_steps_per_s_{name}"] = round(durable[(runs, steps)], 1)
            self.figures[f"plain_chain_steps_per_s_{name}"] = round(plain[(runs, steps)], 1)
            ratios[name] = round(durable[(runs, steps)] / plain[(runs, steps)], 2)
            self.figures[f"durable_vs_chain_{name}"] = ratios[name]
            self.say(
                f"throughput {name}: durable {durable[(runs, steps)]:.0f} steps/s, plain chain "
                f"{plain[(runs, steps)]:.0f} steps/s ({ratios[name]}x)"
            )
        self.figures["durable_vs_chain"] = min(ratios.values())

    def durable_runs(self, cluster: Cluster, count: int, steps: int) -> float:
        begin = time.time()
        ids = [
            Run.objects.start("bench_noop", {"steps": steps}, queue=cluster.queue).pk for _ in range(count)
        ]
        wait_until(lambda: self.finished(ids), 600, "the durable runs", cluster)
        end = Run.objects.filter(pk__in=ids).aggregate(end=Max("finished_at"))["end"].timestamp()
        return count * steps / (end - begin)

    def plain_chains(self, cluster: Cluster, count: int, steps: int) -> float:
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            os.environ.setdefault(
                "DURABLE_BROKER_DIR", settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
            )
        from harness import stock

        names = [uuid.uuid4().hex for _ in range(count)]
        for name in names:
            chain(*[stock.noop.si() for _ in range(steps)], stock.done.si(name)).apply_async(
                queue=cluster.queue
            )
        done = [cluster.done_dir / name for name in names]
        wait_until(lambda: all(path.exists() for path in done), 600, "the chains", cluster)
        return max(float(path.read_text()) for path in done)

    # --- the database's floor ----------------------------------------------------------

    def floor(self) -> None:
        per_connection = self.config.floor_rows // self.config.processes
        table = FloorRow._meta.db_table

        def insert_loop():
            with connections["default"].cursor() as cursor:
                for value in range(per_connection):
                    cursor.execute(
                        f"INSERT INTO {table} (value) VALUES (%s)", [value]
                    )  # autocommit: one commit each
            connections["default"].close()

        threads = [threading.Thread(target=insert_loop) for _ in range(self.config.processes)]
        begin = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows_per_s = per_connection * self.config.processes / (time.monotonic() - begin)
        self.figures["db_floor_commits_per_s"] = round(rows_per_s, 1)
        if "durable_steps_per_s" in self.figures:
            self.figures["durable_vs_floor"] = round(self.figures["durable_steps_per_s"] / rows_per_s, 3)
        self.say(f"floor: {rows_per_s:.0f} single-row commits/s")

    # --- bytes per checkpoint -----------------------------------------------------------

    def checkpoint_bytes(self) -> None:
        """Storage a checkpoint costs beyond its output: table and index growth per row."""
        from django.utils import timezone

        from steps.models import Checkpoint

        runs, steps = 50, 200
        before = self.checkpoint_storage()
        now = timezone.now()
        for _ in range(runs):
            run = Run.objects.create(workflow="bench_noop", input={"steps": steps}, status=Status.SUCCEEDED)
            Checkpoint.objects.bulk_create(
                Checkpoint(
                    run=run,
                    position=position,
                    name="noop",
                    status="succeeded",
                    output=None,
                    attempts=1,
                    started_at=now,
                    finished_at=now,
                )
                for position in range(steps)
            )
        grown = self.checkpoint_storage() - before
        rows = runs * steps
        self.figures["bytes_per_checkpoint_beyond_output"] = round(grown / rows, 1)
        self.say(f"storage: {grown / rows:.0f} bytes per checkpoint beyond its output ({rows} rows)")

    @staticmethod
    def checkpoint_storage() -> int:
        """Bytes used by the checkpoint table, its indexes and its TOAST table."""
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_total_relation_size('steps_checkpoint')")
                return cursor.fetchone()[0]
            cursor.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = 'steps_checkpoint' OR name IN "
                "(SELECT name FROM sqlite_master WHERE tbl_name = 'steps_checkpoint' AND type = 'index')"
            )
            return cursor.fetchone()[0] or 0

    # --- recovery ----------------------------------------------------------------------

    def recovery(self) -> None:
        child, whole = [], []
        cluster = self.cluster("recovery")
        cluster.beat()
        workers = [cluster.worker(f"w{i}", pool="prefork", concurrency=1) for i in range(2)]
        try:
            self.finished_run(cluster, pause=0)  # both ready
            for _ in range(self.config.recovery_samples):
                run, call = self.run_in_step(cluster)
                killed_at = time.time()
                subprocess.run(["kill", "-9", str(call.pid)], check=True)
                child.append(self.next_call(run, call, killed_at, cluster))
            for _ in range(self.config.recovery_samples):
                run, call = self.run_in_step(cluster)
                victim = next(w for w in workers if call.pid in process_tree(w.pid))
                killed_at = time.time()
                cluster.kill(victim)
                whole.append(self.next_call(run, call, killed_at, cluster))
                workers.remove(victim)
                workers.append(cluster.worker(f"w{len(cluster.processes)}", pool="prefork", concurrency=1))
                self.finished_run(cluster, pause=0)
        finally:
            cluster.stop()
        for name, samples in (("prefork_child", child), ("whole_worker", whole)):
            self.figures[f"recovery_{name}_p50_s"] = round(median(samples), 3)
            self.figures[f"recovery_{name}_p95_s"] = round(percentile(samples, 0.95), 3)
        rounded = [sorted(round(seconds, 2) for seconds in samples) for samples in (child, whole)]
        self.say(f"recovery: prefork child {rounded[0]}, whole worker {rounded[1]}")

    def finished_run(self, cluster: Cluster, pause: float) -> None:
        ids = [Run.objects.start("bench_sleepy", {"pause": pause}, queue=cluster.queue).pk for _ in range(4)]
        wait_until(lambda: self.finished(ids), 120, "workers to be ready", cluster)

    def run_in_step(self, cluster: Cluster):
        run = Run.objects.start("bench_sleepy", {"pause": 60}, queue=cluster.queue)
        wait_until(lambda: Call.objects.filter(run_id=run.pk).exists(), 60, "the step to start", cluster)
        return run, Call.objects.get(run_id=run.pk)

    def next_call(self, run: Run, first: Call, killed_at: float, cluster: Cluster) -> float:
        wait_until(
            lambda: Call.objects.filter(run_id=run.pk).count() > 1, 60, "the step to start again", cluster
        )
        again = Call.objects.filter(run_id=run.pk).exclude(pk=first.pk).get()
        wait_until(lambda: self.finished([run.pk]), 60, "the recovered run to finish", cluster)
        return again.started_at - killed_at

    # --- memory --------------------------------------------------------------------------

    def memory(self) -> None:
        first, second = self.config.memory_runs
        cluster = self.cluster("memory")
        worker = cluster.worker("solo", pool="solo")
        try:
            rss = []
            for count in (first, second - first):
                ids = [
                    Run.objects.start("bench_noop", {"steps": 2}, queue=cluster.queue).pk
                    for _ in range(count)
                ]
                wait_until(lambda ids=ids: self.finished(ids), 1200, f"{count} runs", cluster)
                rss.append(resident_kib(worker.pid))
        finally:
            cluster.stop()
        self.figures[f"worker_rss_after_{first}_runs_mib"] = round(rss[0] / 1024, 1)
        self.figures[f"worker_rss_after_{second}_runs_mib"] = round(rss[1] / 1024, 1)
        self.figures["worker_rss_growth"] = round(rss[1] / rss[0], 3)
        self.say(
            f"memory: {rss[0] / 1024:.1f} MiB after {first} runs, {rss[1] / 1024:.1f} MiB after {second}"
        )

    # --- pages -----------------------------------------------------------------------------

    def pages(self) -> None:
        from django.contrib.auth.models import User
        from django.core.management import call_command

        user = User.objects.create_superuser(f"bench-{uuid.uuid4().hex[:6]}", "", uuid.uuid4().hex)
        client = Client()
        client.force_login(user)
        seeded = Run.objects.count()
        for size in self.config.page_sizes:
            # Earlier phases may already have made more runs than this size; the 1,000-step
            # run is added either way.
            more = max(size - Run.objects.count(), 0)
            call_command("seed_runs", more, long_run=self.config.detail_steps, batch=5000, verbosity=0)
            long_run = Run.objects.filter(steps_done=self.config.detail_steps).order_by("-id").first()
            for page, url in (("list", "/"), ("detail", f"/runs/{long_run.pk}/")):
                times, queries = self.time_page(client, url)
                self.figures[f"page_{page}_{size}_p50_ms"] = round(median(times), 1)
                self.figures[f"page_{page}_{size}_p95_ms"] = round(percentile(times, 0.95), 1)
                self.figures[f"page_{page}_{size}_queries"] = queries
                self.say(
                    f"pages: {page} at {size} runs: p95 {percentile(times, 0.95):.1f} ms, {queries} queries"
                )
        del seeded

    def time_page(self, client: Client, url: str) -> tuple[list[float], int]:
        for _ in range(3):
            assert client.get(url).status_code == 200, url
        times = []
        for _ in range(self.config.page_requests):
            begin = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - begin) * 1000)
            assert response.status_code == 200
        with CaptureQueriesContext(connection) as captured:
            client.get(url)
        return times, len(captured.captured_queries)

    def run(self, phases: list[str]) -> dict:
        for phase in PHASES:
            if phase in phases:
                getattr(self, phase)()
        return self.figures


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# --- the scratch database and the record ---------------------------------------------------


def scratch_database_url() -> tuple[str, callable]:
    """Create an empty database of the configured kind; return its URL and a drop function."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        path = Path(settings.VAR_DIR) / "bench.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", lambda: None
    name = f"{db['NAME']}_bench"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return database_url({**db, "NAME": name}, "postgresql"), drop


def run_in_scratch(config_args: list[str], say=print) -> dict:
    url, drop = scratch_database_url()
    env = {**os.environ, "DATABASE_URL": url, "DURABLE_WORKFLOW_MODULES": "harness.workflows"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    try:
        subprocess.run([*manage, "migrate", "--verbosity", "0"], env=env, check=True, cwd=ROOT)
        out = Path(settings.VAR_DIR) / f"bench-{os.getpid()}.json"
        inner = subprocess.run([*manage, "bench", "--inner", str(out), *config_args], env=env, cwd=ROOT)
        if inner.returncode != 0:
            raise RuntimeError("the benchmark failed; see its output above")
        figures = json.loads(out.read_text())
        out.unlink()
        return figures
    finally:
        drop()


def machine() -> dict:
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "database": connection.vendor,
        "broker": settings.CELERY_BROKER_URL.split("://")[0],
    }


TARGETS = {
    "durable_vs_chain": ("≥ 3×", lambda v: v >= 3),
    "recovery_prefork_child_p95_s": ("< 1 s", lambda v: v < 1),
    "recovery_whole_worker_p95_s": ("≤ 3 s", lambda v: v <= 3),
    "worker_rss_growth": ("flat (≤ 1.10)", lambda v: v <= 1.10),
    "bytes_per_checkpoint_beyond_output": ("≤ 200", lambda v: v <= 200),
}


def verdict(key: str, value) -> str:
    if key in TARGETS:
        text, holds = TARGETS[key]
        return f"{text}: {'met' if holds(value) else 'MISSED'}"
    if key.startswith("page_list_") and key.endswith("_p95_ms"):
        return f"≤ 50 ms: {'met' if value <= 50 else 'MISSED'}"
    if key.startswith("page_detail_") and key.endswith("_p95_ms"):
        return f"≤ 100 ms: {'met' if value <= 100 else 'MISSED'}"
    return ""


def render(figures: dict, about: dict) -> str:
    lines = [
        f"{about['date']} · {about['cpus']} CPUs · {about['cpu']} · {about['database']} + {about['broker']}"
    ]
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        lines.append(f"{key:<{width}}  {value!s:>10}  {verdict(key, value)}")
    return "\n".join(lines)


def record(figures: dict, about: dict, path: Path) -> None:
    """Add this run's figures to docs/benchmarks.md, keeping earlier entries below."""
    header = "# Benchmarks\n\nNewest first. Produced by `make bench` (`python manage.py bench --record`).\n"
    existing = path.read_text() if path.exists() else header
    body = existing[len(header) :] if existing.startswith(header) else "\n" + existing
    rows = "\n".join(f"| {key} | {value} | {verdict(key, value)} |" for key, value in figures.items())
    entry = (
        f"\n## {about['date']}: {about['database']} + {about['broker']}\n\n"
        f"Machine: {about['cpus']} CPUs ({about['cpu']}), Python {about['python']}.\n\n"
        f"| figure | value | target |\n| --- | --- | --- |\n{rows}\n"
    )
    path.write_text(header + entry + body)
