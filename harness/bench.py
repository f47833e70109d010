"""Benchmarks: every figure is measured against a baseline taken in the same run.

The measurements run in a scratch database (a copy of the configured one's kind,
on the same server), so seeding a million runs never touches real data.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from statistics import median

from celery import chain
from django.conf import settings
from django.db import connection, connections
from django.db.models import Max, Min
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from harness import workflows  # noqa: F401  (registers the bench workflows in this process)
from harness.cluster import Cluster, database_url, process_tree
from harness.models import Call, FloorRow
from runs import dispatch, recovery, stepinputs
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep
from steps.models import Branch, BranchStatus

ROOT = Path(__file__).resolve().parent.parent
PHASES = (
    "throughput",
    "async_steps",
    "io_bound",
    "checkpoint_bytes",
    "agent_loop_bytes",
    "floor",
    "recovery",
    "memory",
    "pages",
    "wakeups",
)


@dataclass
class BenchConfig:
    processes: int = 2  # Celery's default: one per CPU on this 2-core machine
    # Throughput shapes, (runs, steps each): many short runs, and a few long ones.
    shapes: tuple[tuple[int, int], ...] = ((500, 10), (20, 100))
    throughput_rounds: int = 2
    # Async steps against sync ones, in one worker: (runs, steps each), and rounds per side.
    async_shape: tuple[int, int] = (200, 10)
    async_rounds: int = 3
    # I/O-bound runs: (runs, steps each, seconds each step waits).
    io_shape: tuple[int, int, float] = (64, 5, 0.05)
    floor_rows: int = 2000
    recovery_samples: int = 5
    memory_runs: tuple[int, int] = (1000, 10000)
    page_sizes: tuple[int, ...] = (10_000,)
    page_requests: int = 20
    detail_steps: int = 1000
    waiting_runs: int = 100_000
    idle_sweeps: int = 20
    one_by_one_wakeups: int = 2000
    doorbell_wakeups: int = 10_000
    agent_loop_calls: int = 200  # model calls in the agent loop whose storage is measured


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

        Two shapes (many short runs, few long ones); the lower ratio is the headline. Each
        side is measured `throughput_rounds` times, the two sides taking turns to go first,
        and its best figure counts: a burst of other work on the machine then costs one
        round, not the comparison.
        """
        durable: dict = {shape: 0.0 for shape in self.config.shapes}
        plain: dict = {shape: 0.0 for shape in self.config.shapes}
        sides = [(self.durable_side, durable), (self.plain_side, plain)]
        for round_number in range(self.config.throughput_rounds):
            for measure, best in sides if round_number % 2 == 0 else reversed(sides):
                for shape, figure in measure().items():
                    best[shape] = max(best[shape], figure)
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

    def durable_side(self) -> dict:
        cluster = self.cluster("throughput")
        cluster.worker("w", pool="prefork", concurrency=self.config.processes)
        try:
            self.durable_runs(cluster, 4, 5)  # warm the worker up
            return {shape: self.durable_runs(cluster, *shape) for shape in self.config.shapes}
        finally:
            cluster.stop()

    def plain_side(self) -> dict:
        baseline = self.cluster("baseline")
        baseline.stock_worker("stock", concurrency=self.config.processes)
        try:
            self.plain_chains(baseline, 2, 5)  # warm the plain path too
            figures = {}
            for shape in self.config.shapes:
                begin = time.time()
                figures[shape] = shape[0] * shape[1] / (self.plain_chains(baseline, *shape) - begin)
            return figures
        finally:
            baseline.stop()

    def durable_runs(self, cluster: Cluster, count: int, steps: int, workflow: str = "bench_noop") -> float:
        begin = time.time()
        ids = [Run.objects.start(workflow, {"steps": steps}, queue=cluster.queue).pk for _ in range(count)]
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

    # --- async steps -------------------------------------------------------------------

    def async_steps(self) -> None:
        """Async steps in an async workflow against sync steps in a sync one, same worker.

        Both sides run in one prefork worker, taking turns to go first; each side's best
        round counts. An async step runs on its process's event loop, handed over by the
        run's thread, which waits for it (steps.eventloop).
        """
        sides = {"bench_noop": 0.0, "bench_async_noop": 0.0}
        cluster = self.cluster("async")
        cluster.worker("w", pool="prefork", concurrency=self.config.processes)
        try:
            for workflow in sides:
                self.durable_runs(cluster, 4, 5, workflow)  # warm both paths up
            for round_number in range(self.config.async_rounds):
                order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
                for workflow in order:
                    figure = self.durable_runs(cluster, *self.config.async_shape, workflow)
                    sides[workflow] = max(sides[workflow], figure)
        finally:
            cluster.stop()
        sync, asynchronous = sides["bench_noop"], sides["bench_async_noop"]
        self.figures["sync_steps_per_s"] = round(sync, 1)
        self.figures["async_steps_per_s"] = round(asynchronous, 1)
        self.figures["async_vs_sync_steps"] = round(asynchronous / sync, 2)
        self.say(
            f"async steps: {asynchronous:.0f} steps/s, sync steps {sync:.0f} steps/s "
            f"({asynchronous / sync:.2f}x)"
        )

    # --- I/O-bound steps ---------------------------------------------------------------

    def io_bound(self) -> None:
        """Steps that wait 50 ms (a model call): several runs per pool process against one."""
        figures = {}
        for runs_per_process in (1, settings.DURABLE_RUNS_PER_PROCESS):
            cluster = Cluster(
                self.log_dir / f"io-{runs_per_process}",
                self.url,
                "harness.workflows",
                DURABLE_LOG_LEVEL="WARNING",
                DURABLE_RUNS_PER_PROCESS=str(runs_per_process),
            )
            cluster.worker("w", pool="prefork", concurrency=self.config.processes)
            try:
                count, steps, pause = self.config.io_shape
                begin = time.time()
                ids = [
                    Run.objects.start("bench_io", {"steps": steps, "pause": pause}, queue=cluster.queue).pk
                    for _ in range(count)
                ]
                wait_until(lambda ids=ids: self.finished(ids), 600, "the I/O-bound runs", cluster)
                end = Run.objects.filter(pk__in=ids).aggregate(end=Max("finished_at"))["end"].timestamp()
                figures[runs_per_process] = count * steps / (end - begin)
            finally:
                cluster.stop()
        one, many = figures[1], figures[settings.DURABLE_RUNS_PER_PROCESS]
        self.figures["io_steps_per_s_one_run_per_process"] = round(one, 1)
        self.figures["io_steps_per_s"] = round(many, 1)
        self.figures["io_vs_one_run_per_process"] = round(many / one, 2)
        self.say(
            f"I/O-bound: {many:.0f} steps/s with {settings.DURABLE_RUNS_PER_PROCESS} runs per process, "
            f"{one:.0f} with one ({many / one:.1f}x)"
        )

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

    # --- an agent loop's bytes per model call ----------------------------------------------

    def agent_loop_bytes(self) -> None:
        """What a long agent loop stores per model call, early and late in the loop.

        Each call keeps its new messages and a reference to the call it extends
        (agentkit.history); keeping the whole conversation instead, as checkpoints did
        before, is computed from the same checkpoints for comparison. Bytes are the
        JSON text of the checkpoint's input, output and meta (before the database's
        own compression).
        """
        from agentkit import history
        from runs.engine import execute_run
        from steps.models import Checkpoint

        calls = self.config.agent_loop_calls
        window = min(10, calls // 2)
        fake_model = dict(AGENTS_LLM_PROVIDER="fake", AGENTS_FAKE_FAILURE_RATE=0, AGENTS_FAKE_LATENCY=0)
        with override_settings(**fake_model), counted_doorbells():
            run = Run.objects.start("bench_agent_loop", {"calls": calls})
            outcomes = [execute_run(run.pk)]  # one delivery executes it all, unless it is handed back
            while outcomes[-1] not in ("succeeded", "failed") and len(outcomes) < 10:
                outcomes.append(execute_run(run.pk))
        assert outcomes[-1] == "succeeded", outcomes
        steps = list(Checkpoint.objects.filter(run=run, name="llm:loop").order_by("position"))
        assert len(steps) == calls, (len(steps), calls)

        def stored(checkpoint) -> int:
            return sum(len(json.dumps(v)) for v in (checkpoint.input, checkpoint.output, checkpoint.meta))

        def whole(checkpoint) -> int:
            """The same call's checkpoint had it kept the whole conversation."""
            earlier = history.earlier_than(checkpoint)
            messages = history.rebuild(checkpoint.meta["request"], earlier, limit=10 * calls).messages
            request = {k: v for k, v in checkpoint.input["args"][0].items() if k != "history"}
            meta = {**checkpoint.meta, "request": {**checkpoint.meta["request"], "messages": messages}}
            meta["request"].pop("history", None)
            old_input = stepinputs.record([{**request, "messages": messages}], {})
            return sum(len(json.dumps(v)) for v in (old_input, checkpoint.output, meta))

        first, last = steps[:window], steps[-window:]
        early = sum(map(stored, first)) / window
        late = sum(map(stored, last)) / window
        name = f"{len(steps) - window + 1}_{len(steps)}"
        self.figures[f"agent_loop_bytes_per_call_1_{window}"] = round(early)
        self.figures[f"agent_loop_bytes_per_call_{name}"] = round(late)
        self.figures["agent_loop_bytes_growth"] = round(late / early, 3)
        self.figures[f"agent_loop_whole_conversation_bytes_per_call_{name}"] = round(
            sum(map(whole, last)) / window
        )
        self.say(
            f"agent loop: {early:.0f} bytes per model call at calls 1-{window}, {late:.0f} at calls "
            f"{name.replace('_', '-')} of {calls}"
        )

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
        # One pool process that executes several runs at once: the worker's whole tree counts.
        worker = cluster.worker("w", pool="prefork", concurrency=1)
        try:
            rss = []
            for count in (first, second - first):
                ids = [
                    Run.objects.start("bench_noop", {"steps": 2}, queue=cluster.queue).pk
                    for _ in range(count)
                ]
                wait_until(lambda ids=ids: self.finished(ids), 1200, f"{count} runs", cluster)
                rss.append(sum(resident_kib(pid) for pid in process_tree(worker.pid)))
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

    # --- wake-ups -------------------------------------------------------------------------

    def wakeups(self) -> None:
        """The sweep over many waiting runs: none due, then all of them due at once.

        Doorbells are counted in this process, not sent: 100,000 broker messages would
        measure the broker. Its share is measured apart, on fewer runs (`doorbells`).
        Woken runs stay pending, unclaimed: the sweep must not ring them again meanwhile.
        """
        count = self.config.waiting_runs
        no_redispatch = override_settings(DURABLE_REDISPATCH_AFTER=24 * 3600)
        with counted_doorbells() as rung, quiet("runs.recovery"), no_redispatch:
            floor = self.seed_waiting(count, due=False)
            self.idle_sweeps("sleepers")
            self.clear_runs_above(floor)
            floor = self.seed_waiting(count, due=False, others=0.01)
            self.idle_sweeps("mixed")
            self.clear_runs_above(floor)

            floor = self.seed_waiting(self.config.one_by_one_wakeups, due=True)
            one_by_one = self.wake_one_by_one()
            self.clear_runs_above(floor)

            floor = self.seed_waiting(count, due=True)
            rung.clear()
            one = self.one_sweeper(floor)
            assert sorted(rung) == sorted(Run.objects.filter(pk__gt=floor).values_list("pk", flat=True))
            self.clear_runs_above(floor)

            floor = self.seed_waiting(count, due=True)
            rung.clear()
            two = self.two_sweepers(count)
            assert len(rung) == len(set(rung)) == count, "a run was woken twice, or not at all"
            self.clear_runs_above(floor)
        with quiet("runs.recovery"), no_redispatch:
            self.doorbells()
        figures = self.figures
        figures["wakeups_one_by_one_per_s"] = round(one_by_one, 1)
        figures["wakeups_per_s"] = round(one, 1)
        figures["wakeups_vs_one_by_one"] = round(one / one_by_one, 1)
        figures["wakeups_two_sweepers_per_s"] = round(two, 1)
        figures["wakeups_two_sweepers_vs_one"] = round(two / one, 2)
        self.say(
            f"wake-ups: {one:.0f}/s in batches ({one / one_by_one:.1f}x one by one, {one_by_one:.0f}/s), "
            f"two sweepers {two:.0f}/s ({two / one:.2f}x one); most overdue first: "
            f"{figures['wakeups_most_overdue_first']}"
        )

    def doorbells(self) -> None:
        """Real doorbells to a throwaway queue: alone, then rung by sweeps waking runs."""
        from config.celery import app

        queue = "bench-throwaway"  # one name, so no run of the bench leaves a queue behind
        count = self.config.doorbell_wakeups
        try:
            dispatch.ring(0, queue)  # connect first
            begin = time.perf_counter()
            for run_id in range(count):
                dispatch.ring(run_id, queue)
            alone = count / (time.perf_counter() - begin)
            floor = self.seed_waiting(count, due=True, queue=queue)
            woken = self.one_sweeper(floor)
            self.clear_runs_above(floor)
        finally:
            with app.connection_for_write() as broker:
                broker.default_channel.queue_purge(queue)
        self.figures["doorbells_per_s"] = round(alone, 1)
        self.figures["wakeups_with_doorbells_per_s"] = round(woken, 1)
        self.say(f"doorbells: {alone:.0f}/s from one process; {woken:.0f} wake-ups/s ringing them ({count})")

    def seed_waiting(self, count: int, *, due: bool, others: float = 0.0, queue: str = "durable") -> int:
        """Insert `count` waiting runs in bulk; return the highest run id below them.

        Due runs are overdue by 1 s to a few minutes, in an order unrelated to their
        ids. Runs not due sleep for hours; with `others`, that fraction of them each
        waits for a signal, for a child run (one of the sleepers) and for a parallel
        group (one branch backing off for an hour), none of which has arrived.
        """
        floor = Run.objects.aggregate(top=Max("id"))["top"] or 0
        now = timezone.now()
        offsets = list(range(count))
        random.Random(count).shuffle(offsets)
        due_in = (lambda offset: -1 - offset / 1000) if due else (lambda offset: 3600 + offset)
        runs = [
            Run(
                workflow="bench_noop",
                queue=queue,
                status=Status.WAITING,
                wait_kind=WaitKind.SLEEP,
                wait_position=0,
                steps_done=1,
                wake_at=now + timedelta(seconds=due_in(offset)),
            )
            for offset in offsets
        ]
        Run.objects.bulk_create(runs, batch_size=5000)
        kinds = [WaitKind.SIGNAL, WaitKind.CHILD, WaitKind.BRANCHES]
        per_kind = round(count * others)
        if per_kind:
            ids = list(Run.objects.filter(pk__gt=floor).order_by("pk").values_list("pk", flat=True))
            waiters = {kind: ids[i * per_kind : (i + 1) * per_kind] for i, kind in enumerate(kinds)}
            children = ids[3 * per_kind : 4 * per_kind]
            Run.objects.filter(pk__in=waiters[WaitKind.SIGNAL]).update(
                wait_kind=WaitKind.SIGNAL, wait_signal="approve", wake_at=None
            )
            for kind in (WaitKind.CHILD, WaitKind.BRANCHES):
                Run.objects.filter(pk__in=waiters[kind]).update(wait_kind=kind, wake_at=None)
            for parent, child in zip(waiters[WaitKind.CHILD], children, strict=True):
                Run.objects.filter(pk=child).update(parent_id=parent, parent_position=0)
            Branch.objects.bulk_create(
                (
                    Branch(
                        run_id=run_id,
                        position=0,
                        index=0,
                        name="noop",
                        target="harness.workflows:noop",
                        status=BranchStatus.WAITING,
                        wake_at=now + timedelta(hours=1),
                    )
                    for run_id in waiters[WaitKind.BRANCHES]
                ),
                batch_size=5000,
            )
        analyze()
        return floor

    def clear_runs_above(self, floor: int) -> None:
        Branch.objects.filter(run_id__gt=floor)._raw_delete(Branch.objects.db)
        Run.objects.filter(pk__gt=floor)._raw_delete(Run.objects.db)
        analyze()

    def idle_sweeps(self, population: str) -> None:
        """Sweeps that find nothing to wake among the seeded runs."""
        for _ in range(3):
            sweep()  # warm up
        times = []
        for _ in range(self.config.idle_sweeps):
            begin = time.perf_counter()
            report = sweep()
            times.append((time.perf_counter() - begin) * 1000)
            assert not report.woken, report
        checks = []
        for _ in range(self.config.idle_sweeps):
            begin = time.perf_counter()
            recovery._wake_runs(recovery.SweepReport())
            checks.append((time.perf_counter() - begin) * 1000)
        with CaptureQueriesContext(connection) as captured:
            sweep()
        name = f"wakeups_idle_sweep_{population}"
        self.figures[f"{name}_p50_ms"] = round(median(times), 2)
        self.figures[f"{name}_p95_ms"] = round(percentile(times, 0.95), 2)
        self.figures[f"{name}_wake_checks_p50_ms"] = round(median(checks), 2)
        self.figures[f"{name}_queries"] = len(captured.captured_queries)
        self.say(
            f"wake-ups: idle sweep over {self.config.waiting_runs} waiting runs ({population}): "
            f"p50 {median(times):.1f} ms, p95 {percentile(times, 0.95):.1f} ms "
            f"(wake-up checks p50 {median(checks):.1f} ms), {len(captured.captured_queries)} queries"
        )

    def wake_one_by_one(self) -> float:
        """The baseline: one conditional UPDATE per run (Run.wake), as the sweep did before."""
        fields = ("pk", "lease_token", "queue", "workflow")
        begin = time.perf_counter()
        woken = 0
        while candidates := list(Run.objects.due_to_wake().only(*fields)[:500]):
            woken += sum(run.wake() for run in candidates)
        return woken / (time.perf_counter() - begin)

    def one_sweeper(self, floor: int) -> float:
        """Back-to-back sweeps until none is due; wake-ups per second of sweeping."""
        count = Run.objects.filter(pk__gt=floor).count()
        spent, woken, first = 0.0, 0, True
        while True:
            begin = time.perf_counter()
            report = sweep()
            spent += time.perf_counter() - begin
            woken += report.woken
            if first:
                self.figures.setdefault("wakeups_most_overdue_first", most_overdue_first(floor))
                first = False
            if not report.woken:
                break
        assert woken == count, (woken, count)
        return woken / spent

    def two_sweepers(self, count: int) -> float:
        """Two threads sweeping at once, each with its own database connection."""
        woken = [0, 0]
        start = threading.Barrier(3)

        def sweeper(index: int) -> None:
            try:
                start.wait()
                while report := sweep():
                    woken[index] += report.woken
                    if not report.woken:
                        break
            finally:
                connection.close()

        threads = [threading.Thread(target=sweeper, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        start.wait()
        begin = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - begin
        assert sum(woken) == count, (woken, count)
        return count / elapsed

    def run(self, phases: list[str]) -> dict:
        for phase in PHASES:
            if phase in phases:
                getattr(self, phase)()
        return self.figures


@contextmanager
def counted_doorbells():
    """Replace ringing with a list of the run ids that would have been rung."""
    rung: list[int] = []
    real = dispatch.ring
    dispatch.ring = lambda run_id, queue: rung.append(run_id)
    try:
        yield rung
    finally:
        dispatch.ring = real


@contextmanager
def quiet(logger: str):
    """Keep a logger to warnings: the sweep logs a line whenever it wakes anything."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def most_overdue_first(floor: int) -> bool:
    """Every run woken so far was due no later than every run still waiting."""
    seeded = Run.objects.filter(pk__gt=floor)
    woken = seeded.exclude(status=Status.WAITING).aggregate(last=Max("wake_at"))["last"]
    waiting = seeded.filter(status=Status.WAITING).aggregate(first=Min("wake_at"))["first"]
    return woken is not None and (waiting is None or woken <= waiting)


def analyze() -> None:
    """On PostgreSQL, what autovacuum would do after a bulk change, without waiting for it.

    SQLite is left without statistics, as the embedded default runs: nothing there
    runs ANALYZE.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE runs_run")
            cursor.execute("VACUUM ANALYZE steps_branch")


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
    "async_vs_sync_steps": ("≥ 0.8×", lambda v: v >= 0.8),
    "wakeups_idle_sweep_sleepers_p95_ms": ("≤ 10 ms", lambda v: v <= 10),
    "wakeups_per_s": ("≥ 2,000/s", lambda v: v >= 2000),
    "wakeups_two_sweepers_vs_one": ("≥ 1.6×", lambda v: v >= 1.6),
    "wakeups_most_overdue_first": ("True", lambda v: v is True),
    "recovery_prefork_child_p95_s": ("< 1 s", lambda v: v < 1),
    "recovery_whole_worker_p95_s": ("≤ 3 s", lambda v: v <= 3),
    "worker_rss_growth": ("flat (≤ 1.10)", lambda v: v <= 1.10),
    "io_vs_one_run_per_process": ("≥ 20× (issue 16)", lambda v: v >= 20),
    "bytes_per_checkpoint_beyond_output": ("≤ 200", lambda v: v <= 200),
    "agent_loop_bytes_growth": ("flat (≤ 1.2)", lambda v: v <= 1.2),
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
