"""python manage.py chaos: kill and freeze workers, wipe the broker, restart the database; lose nothing."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from harness.chaos import ChaosConfig, ChaosRun, render, write_json


class Command(BaseCommand):
    help = (
        "Run many workflows through real workers while killing and freezing them; exit non-zero on any "
        "loss or duplicate, or when a fault asked for did not happen."
    )

    def add_arguments(self, parser):
        defaults = ChaosConfig()
        parser.add_argument("--workers", type=int, default=defaults.workers)
        parser.add_argument("--runs", type=int, default=defaults.runs)
        parser.add_argument("--steps", type=int, default=defaults.steps)
        parser.add_argument("--pause", type=float, default=defaults.pause, help="seconds a slow step works")
        parser.add_argument(
            "--kills",
            type=int,
            default=defaults.kills,
            help="SIGKILLs (alternately a whole worker and one pool process), spread over the runs' progress",
        )
        parser.add_argument("--no-broker-wipe", action="store_true")
        parser.add_argument("--no-freeze", action="store_true", help="do not SIGSTOP a worker mid-step")
        parser.add_argument(
            "--freeze-seconds",
            type=float,
            default=0.0,
            help="how long the frozen worker stays stopped (default: DURABLE_LEASE_TIMEOUT + 3 s)",
        )
        parser.add_argument(
            "--cpu-step",
            action="store_true",
            help="every fifth run starts with a step holding the GIL for twice the lease timeout",
        )
        parser.add_argument("--db-restart-cmd", default="", help="shell command that restarts the database")
        parser.add_argument("--timeout", type=float, default=defaults.timeout)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", default="", metavar="PATH", help="write the figures as JSON here")

    def handle(self, *args, **options):
        if options["workers"] < 2:
            raise CommandError("--workers must be at least 2: one is always being killed or frozen")
        if options["runs"] < 1 or options["steps"] < 2:
            raise CommandError("--runs must be at least 1 and --steps at least 2")
        if options["kills"] < 0:
            raise CommandError("--kills must not be negative")
        if options["freeze_seconds"] and options["freeze_seconds"] <= settings.DURABLE_LEASE_TIMEOUT:
            raise CommandError(
                f"--freeze-seconds must be longer than the lease timeout ({settings.DURABLE_LEASE_TIMEOUT} s)"
            )
        config = ChaosConfig(
            workers=options["workers"],
            runs=options["runs"],
            steps=options["steps"],
            pause=options["pause"],
            kills=options["kills"],
            wipe_broker=not options["no_broker_wipe"],
            freeze=not options["no_freeze"],
            freeze_seconds=options["freeze_seconds"],
            cpu_step=options["cpu_step"],
            db_restart_cmd=options["db_restart_cmd"],
            timeout=options["timeout"],
            seed=options["seed"],
        )
        report = ChaosRun(config, say=self.stdout.write).run()
        self.stdout.write(render(report))
        if options["json"]:
            write_json(report, options["json"])
        if not report.ok:
            details = {
                "lost or stuck": report.lost_or_stuck,
                "effects applied twice": report.duplicate_effects,
                "doubled positions": report.doubled_positions,
                "wrong outputs": report.wrong_outputs,
                "CPU-bound step repeated": report.cpu_reexecuted,
                "faults that did not happen": report.missed_faults,
            }
            raise CommandError(f"chaos run failed: { {k: v for k, v in details.items() if v} }")
