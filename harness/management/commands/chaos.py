"""python manage.py chaos: kill workers, wipe the broker, restart the database; check nothing was lost."""

from django.core.management.base import BaseCommand, CommandError

from harness.chaos import ChaosConfig, ChaosRun, render, write_json


class Command(BaseCommand):
    help = (
        "Run many workflows through real workers while killing them; exit non-zero on any loss or duplicate."
    )

    def add_arguments(self, parser):
        defaults = ChaosConfig()
        parser.add_argument("--workers", type=int, default=defaults.workers)
        parser.add_argument("--runs", type=int, default=defaults.runs)
        parser.add_argument("--steps", type=int, default=defaults.steps)
        parser.add_argument("--pause", type=float, default=defaults.pause, help="seconds a slow step sleeps")
        parser.add_argument(
            "--kill-every", type=float, nargs=2, default=defaults.kill_interval, metavar=("MIN", "MAX")
        )
        parser.add_argument("--timeout", type=float, default=defaults.timeout)
        parser.add_argument("--no-broker-wipe", action="store_true")
        parser.add_argument("--db-restart-cmd", default="", help="shell command that restarts the database")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", default="", metavar="PATH", help="write the figures as JSON here")

    def handle(self, *args, **options):
        if options["workers"] < 2:
            raise CommandError("--workers must be at least 2: one is always being killed")
        if options["runs"] < 1 or options["steps"] < 2:
            raise CommandError("--runs must be at least 1 and --steps at least 2")
        low, high = options["kill_every"]
        if not 0 < low <= high:
            raise CommandError("--kill-every takes MIN MAX seconds with 0 < MIN <= MAX")
        config = ChaosConfig(
            workers=options["workers"],
            runs=options["runs"],
            steps=options["steps"],
            pause=options["pause"],
            kill_interval=(low, high),
            timeout=options["timeout"],
            wipe_broker=not options["no_broker_wipe"],
            db_restart_cmd=options["db_restart_cmd"],
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
            }
            raise CommandError(f"chaos run failed: { {k: v for k, v in details.items() if v} }")
