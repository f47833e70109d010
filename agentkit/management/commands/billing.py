"""Billing records (provider calls): python manage.py billing prune --older-than 400d."""

from __future__ import annotations

import argparse
import getpass

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentkit import retention
from runs.durations import parse_duration


def duration_argument(text: str):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


class Command(BaseCommand):
    help = "Keep or delete what model providers billed (agents.ProviderCall)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        prune = sub.add_parser("prune", help="delete provider calls older than a duration, in batches")
        prune.add_argument(
            "--older-than",
            required=True,
            type=duration_argument,
            dest="older_than",
            metavar="DURATION",
            help="e.g. 400d or 60w; counted from when the call was made",
        )
        prune.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH_SIZE, dest="batch_size")
        prune.add_argument("--dry-run", action="store_true", dest="dry_run", help="count, delete nothing")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"do_{action}")(**options)

    def do_prune(self, older_than, batch_size: int, dry_run: bool, **_) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        report = retention.prune_calls(
            older_than, batch_size=batch_size, dry_run=dry_run, by=f"cli:{getpass.getuser()}"
        )
        self.stdout.write(str(report))
