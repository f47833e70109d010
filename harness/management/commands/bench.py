"""python manage.py bench: throughput, recovery, memory, pages, storage (an agent loop's too) and wake-ups."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from harness.bench import PHASES, Bench, BenchConfig, machine, record, render, run_in_scratch


class Command(BaseCommand):
    help = "Measure the runtime against plain Celery and the database's floor, in a scratch database."

    def add_arguments(self, parser):
        parser.add_argument("--json", default="", metavar="PATH", help="write the figures as JSON here")
        parser.add_argument("--record", action="store_true", help="add the figures to docs/benchmarks.md")
        parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
        parser.add_argument("--large", action="store_true", help="also time pages at 1,000,000 runs (slow)")
        parser.add_argument(
            "--only", default="", help="comma-separated phases: " + ", ".join(PHASES) + " (default: all)"
        )
        parser.add_argument(
            "--processes", type=int, default=BenchConfig.processes, help="worker processes (and connections)"
        )
        parser.add_argument(
            "--inner", default="", help="internal: measure in this (scratch) database, write JSON here"
        )

    def handle(self, *args, **options):
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        flags = [f"--{flag}" for flag in ("quick", "large") if options[flag]]
        flags += ["--processes", str(options["processes"])]
        phases = [phase.strip() for phase in options["only"].split(",") if phase.strip()] or list(PHASES)
        unknown = set(phases) - set(PHASES)
        if unknown:
            raise CommandError(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
        flags += ["--only", ",".join(phases)]
        if options["inner"]:
            bench = Bench(self.config(options), Path(settings.VAR_DIR) / "bench", say=self.stdout.write)
            figures = bench.run(phases)
            Path(options["inner"]).write_text(json.dumps(figures))
            return
        try:
            figures = run_in_scratch(flags, say=self.stdout.write)
        except RuntimeError as exc:
            raise CommandError(str(exc))
        about = machine()
        self.stdout.write(render(figures, about))
        if options["json"]:
            Path(options["json"]).write_text(json.dumps({"machine": about, "figures": figures}, indent=2))
        if options["record"]:
            record(figures, about, settings.BASE_DIR / "docs" / "benchmarks.md")

    @staticmethod
    def config(options) -> BenchConfig:
        config = BenchConfig()
        if options["quick"]:
            config = BenchConfig(
                shapes=((50, 5), (6, 30)),
                throughput_rounds=1,
                async_shape=(40, 5),
                async_rounds=1,
                io_shape=(16, 3, 0.05),
                floor_rows=400,
                recovery_samples=2,
                memory_runs=(100, 400),
                page_sizes=(1000,),
                page_requests=5,
                detail_steps=200,
                waiting_runs=10_000,
                one_by_one_wakeups=500,
                doorbell_wakeups=2000,
                agent_loop_calls=40,
            )
        if options["large"]:
            config.page_sizes = (10_000, 1_000_000)
        config.processes = options["processes"]
        return config
