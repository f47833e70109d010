"""Operator command line: python manage.py runs <start|list|show|resume|retry|retry-now|edit|cancel|
terminate|signal|bulk>, and for operations: <export|replay|check|prune>.

An action on a run whose code changed since it last ran prints the warning first.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs import jsoninput, replaycheck, retention
from runs.bulk import ACTIONS, RETRYING, BulkError, BulkPlan, Selection, retrying_runs
from runs.durations import parse_duration
from runs.export import OUTCOMES, ExportError, export_json, load_export, replay
from runs.jsoninput import JSONInputError
from runs.models import InvalidOperation, ReplayCheck, Run, Status
from runs.workflow import UnknownWorkflow


def json_argument(text: str):
    try:
        return jsoninput.parse(text)
    except JSONInputError as exc:
        raise CommandError(f"{exc} ({jsoninput.excerpt(text)})")


def duration_argument(text: str):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def datetime_argument(text: str):
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    try:
        moment = parse_datetime(text)
    except ValueError:
        moment = None
    if moment is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date and time (e.g. 2026-11-30T14:00)")
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


def prunable_status(text: str) -> str:
    if text not in retention.PRUNABLE_STATUSES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: only finished runs can be pruned ({', '.join(retention.PRUNABLE_STATUSES)})"
        )
    return text


class Command(BaseCommand):
    help = "Start, inspect and operate durable runs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        start = sub.add_parser("start", help="start a run of a registered workflow")
        start.add_argument("workflow")
        start.add_argument("--input", default="null", help="the run's input as JSON")
        start.add_argument("--queue", default="")

        listing = sub.add_parser("list", help="list runs, newest first")
        listing.add_argument("--status", choices=[*Status.values, RETRYING])
        listing.add_argument("--workflow")
        listing.add_argument("--limit", type=int, default=50)

        show = sub.add_parser("show", help="show a run with its steps")
        show.add_argument("run_id", type=int)

        for name, text in [
            ("resume", "resume a failed or dead-lettered run"),
            ("cancel", "cancel a run"),
            ("terminate", "interrupt a running run's step now; the run ends failed, resumable"),
        ]:
            command = sub.add_parser(name, help=text)
            command.add_argument("run_id", type=int)
            command.add_argument("--reason", default="")

        retry = sub.add_parser("retry", help="re-execute a run from a step; later checkpoints are superseded")
        retry.add_argument("run_id", type=int)
        retry.add_argument("--from-step", type=int, required=True, dest="from_step", metavar="N")
        retry.add_argument("--reason", default="")
        retry.add_argument(
            "--reuse-signal",
            action="store_true",
            dest="reuse_signals",
            help="retrying across a signal the run received: reuse it (default: wait for a new one)",
        )

        retry_now = sub.add_parser("retry-now", help="cut a step's retry backoff short")
        retry_now.add_argument("run_id", type=int)
        retry_now.add_argument("--reason", default="")

        edit = sub.add_parser(
            "edit", help="replace a step's output and run every later step again (edit and continue)"
        )
        edit.add_argument("run_id", type=int)
        edit.add_argument("--step", type=int, required=True, dest="position", metavar="N")
        edit.add_argument("--output", required=True, help="the step's new output as JSON")
        edit.add_argument(
            "--only",
            action="store_true",
            help="replace only this output and resume (a failed run's failed step); later steps replay",
        )
        edit.add_argument("--reason", default="")

        bulk = sub.add_parser(
            "bulk", help="resume, cancel, retry from a step or retry now: every run a filter selects"
        )
        bulk.add_argument("bulk_action", choices=list(ACTIONS), metavar="ACTION", help=", ".join(ACTIONS))
        bulk.add_argument(
            "--from-step", default="", dest="from_step", metavar="NAME", help="retry: step name"
        )
        bulk.add_argument("--reuse-signal", action="store_true", dest="reuse_signals")
        bulk.add_argument("--workflow", default="")
        bulk.add_argument("--status", default="", choices=["", RETRYING, *Status.values])
        bulk.add_argument("--failed-step", default="", dest="failed_step", metavar="NAME")
        bulk.add_argument("--error-type", default="", dest="error_type")
        bulk.add_argument("--started-after", default=None, dest="started_after", type=datetime_argument)
        bulk.add_argument("--started-before", default=None, dest="started_before", type=datetime_argument)
        bulk.add_argument("--code-version", default="", dest="code_version")
        bulk.add_argument("--reason", default="")
        bulk.add_argument(
            "--yes", action="store_true", help="act; without it only count and sample (dry run)"
        )

        signal = sub.add_parser("signal", help="send a named signal to a run")
        signal.add_argument("run_id", type=int)
        signal.add_argument("name")
        signal.add_argument("--payload", default="null", help="the signal's payload as JSON")
        signal.add_argument("--reason", default="")

        export = sub.add_parser("export", help="write a run, every checkpoint and attempt, as JSON")
        export.add_argument("run_id", type=int)
        export.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")

        replaying = sub.add_parser(
            "replay", help="replay an exported run against the current workflow code, without side effects"
        )
        replaying.add_argument("file", help="a file written by `runs export` (- reads standard input)")

        check = sub.add_parser(
            "check",
            help="before a deploy: replay every in-flight run against this checkout's code, read-only; "
            "exit status 1 if any would diverge",
        )
        check.add_argument(
            "--status",
            action="append",
            choices=replaycheck.IN_FLIGHT,
            dest="statuses",
            metavar="STATUS",
            help=f"only runs in this status (repeatable; default: {', '.join(replaycheck.IN_FLIGHT)})",
        )
        check.add_argument("--workflow", action="append", dest="workflows", metavar="NAME", default=[])
        check.add_argument("--run", action="append", type=int, dest="run_ids", metavar="ID", default=[])
        check.add_argument(
            "--no-save", action="store_true", dest="no_save", help="do not keep the report for the dashboard"
        )

        prune = sub.add_parser("prune", help="delete finished runs older than a duration, in batches")
        prune.add_argument(
            "--older-than",
            required=True,
            type=duration_argument,
            dest="older_than",
            metavar="DURATION",
            help="e.g. 30d, 12h, 2w or 1d12h; counted from when the run finished",
        )
        prune.add_argument(
            "--status",
            action="append",
            type=prunable_status,
            dest="statuses",
            metavar="STATUS",
            help="only runs that ended so (repeatable; default: succeeded and cancelled; failed and "
            "dead runs wait for an operator and go only when named)",
        )
        prune.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH_SIZE, dest="batch_size")
        prune.add_argument(
            "--dry-run", action="store_true", dest="dry_run", help="list what would go, delete nothing"
        )
        prune.add_argument(
            "--show",
            type=int,
            default=retention.DEFAULT_SHOWN,
            metavar="N",
            help=f"name the first N runs taken (default {retention.DEFAULT_SHOWN})",
        )

    def handle(self, *args, action: str, **options) -> None:
        self.actor = f"cli:{getpass.getuser()}"
        try:
            getattr(self, f"do_{action.replace('-', '_')}")(**options)
        except InvalidOperation as exc:
            raise CommandError(str(exc))

    def get_run(self, run_id: int) -> Run:
        try:
            return Run.objects.get(pk=run_id)
        except Run.DoesNotExist:
            raise CommandError(f"No run with id {run_id}.")

    def do_start(self, workflow: str, input: str, queue: str, **_) -> None:
        data = json_argument(input)
        try:
            run = Run.objects.start(workflow, data, queue=queue, by=self.actor)
        except UnknownWorkflow as exc:
            raise CommandError(str(exc))
        except ValueError as exc:
            raise CommandError(str(exc))
        self.stdout.write(f"started run {run.pk} of {run.workflow}")

    def do_list(self, status: str | None, workflow: str | None, limit: int, **_) -> None:
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        runs = Run.objects.all()
        if status == RETRYING:
            runs = retrying_runs(runs).order_by("-pk")
        elif status:
            runs = runs.filter(status=status)
        if workflow:
            runs = runs.filter(workflow=workflow)
        rows = list(runs.only("pk", "workflow", "status", "steps_done", "current_step", "created_at")[:limit])
        if not rows:
            self.stdout.write("no runs")
            return
        self.stdout.write(f"{'ID':>8}  {'STATUS':<10} {'STEPS':>5}  {'WORKFLOW':<24} CREATED")
        for run in rows:
            self.stdout.write(
                f"{run.pk:>8}  {run.status:<10} {run.steps_done:>5}  {run.workflow:<24} "
                f"{run.created_at:%Y-%m-%d %H:%M:%S}"
            )

    def do_show(self, run_id: int, **_) -> None:
        run = self.get_run(run_id)
        self.stdout.write(f"run {run.pk}  {run.workflow}  {run.get_status_display()}")
        self.stdout.write(f"  input:      {jsoninput.compact(run.input)}")
        if run.output is not None:
            self.stdout.write(f"  output:     {jsoninput.compact(run.output)}")
        if run.error_type:
            self.stdout.write(f"  error:      {run.error_type}: {run.error_message}")
        if run.wait_kind:
            self.stdout.write(
                f"  waiting:    {run.wait_kind} {run.wait_signal} until {run.wake_at or 'signalled'}"
            )
        self.stdout.write(f"  recoveries: {run.recovery_count}   epoch: {run.epoch}")
        self.stdout.write("  steps:")
        for checkpoint in run.checkpoints.order_by("position", "id"):
            mark = " (superseded)" if checkpoint.superseded_at else ""
            result = (
                jsoninput.compact(checkpoint.output, cap=200)
                if checkpoint.status == "succeeded"
                else f"{checkpoint.error_type}: {checkpoint.error_message}"
            )
            self.stdout.write(
                f"    {checkpoint.position:>4}  {checkpoint.name:<24} {checkpoint.status:<9} "
                f"attempts={checkpoint.attempts}{mark}  {result[:200]}"
            )

    def warned_run(self, run_id: int) -> Run:
        """The run, after printing what the operator must know about its code."""
        run = self.get_run(run_id)
        warning = run.code_warning()
        if warning:
            self.stderr.write(f"warning: {warning}")
        return run

    def do_resume(self, run_id: int, reason: str, **_) -> None:
        self.warned_run(run_id).resume(by=self.actor, reason=reason)
        self.stdout.write(f"resumed run {run_id}")

    def do_retry(self, run_id: int, from_step: int, reason: str, reuse_signals: bool, **_) -> None:
        run = self.warned_run(run_id)
        received = run.signals_received_from(from_step).count()
        if received and not reuse_signals:
            self.stderr.write(
                f"note: step {from_step} or a later one received {received} signal(s); the run waits for "
                "new ones (--reuse-signal sends the received ones again)"
            )
        run.retry_from(from_step, by=self.actor, reason=reason, reuse_signals=reuse_signals)
        self.stdout.write(f"retrying run {run_id} from step {from_step}")

    def do_retry_now(self, run_id: int, reason: str, **_) -> None:
        self.warned_run(run_id).retry_now(by=self.actor, reason=reason)
        self.stdout.write(f"run {run_id} retries its step now")

    def do_edit(self, run_id: int, position: int, output: str, only: bool, reason: str, **_) -> None:
        data = json_argument(output)
        run = self.warned_run(run_id)
        if only:
            run.edit_checkpoint(position, data, by=self.actor, reason=reason)
            self.stdout.write(f"replaced the output of step {position} of run {run_id}; resumed")
        else:
            run.edit_and_continue(position, data, by=self.actor, reason=reason)
            self.stdout.write(
                f"replaced the output of step {position} of run {run_id}; continues from {position + 1}"
            )

    def do_bulk(
        self, bulk_action: str, from_step: str, reuse_signals: bool, reason: str, yes: bool, **options
    ):
        fields = (
            "workflow",
            "status",
            "failed_step",
            "error_type",
            "started_after",
            "started_before",
            "code_version",
        )
        try:
            plan = BulkPlan(
                bulk_action, Selection(**{name: options[name] for name in fields}), from_step, reuse_signals
            )
        except BulkError as exc:
            raise CommandError(str(exc))
        preview = plan.preview()
        self.stdout.write(
            f"{preview['selected']} run(s) selected; {preview['eligible']} can be acted on "
            f"({ACTIONS[bulk_action][0]})"
        )
        for row in preview["sample"]:
            where = f" from step {row['position']}" if row["position"] is not None else ""
            self.stdout.write(
                f"  run {row['id']}  {row['workflow']}  {row['status']}{where}  {row['error'][:100]}"
            )
        for warning in preview["code_warnings"]:
            self.stderr.write(f"warning: {warning}")
        if preview["signal_steps"] and not reuse_signals:
            self.stderr.write(
                f"note: {preview['signal_steps']} of them wait for a new signal (--reuse-signal reuses)"
            )
        if not yes:
            self.stdout.write("dry run: nothing changed (add --yes to act)")
            return
        self.act_in_batches(plan, reason)

    def act_in_batches(self, plan: BulkPlan, reason: str) -> None:
        total, past = 0, ACTIONS[plan.action][1]
        while True:
            batch = plan.apply_batch(by=self.actor, reason=reason)
            total += len(batch.done)
            for refusal in batch.refused:
                self.stderr.write(f"skipped: {refusal}")
            self.stdout.write(f"{past} {total} run(s); {batch.remaining} left")
            if not batch.remaining or not batch.done:
                return

    def do_cancel(self, run_id: int, reason: str, **_) -> None:
        outcome = self.get_run(run_id).cancel(by=self.actor, reason=reason)
        self.stdout.write(f"run {run_id}: {outcome}")

    def do_terminate(self, run_id: int, reason: str, **_) -> None:
        outcome = self.get_run(run_id).terminate(by=self.actor, reason=reason)
        self.stdout.write(f"run {run_id}: {outcome}")

    def do_signal(self, run_id: int, name: str, payload: str, reason: str, **_) -> None:
        data = json_argument(payload)
        self.get_run(run_id).send_signal(name, data, by=self.actor, reason=reason)
        self.stdout.write(f"sent signal {name!r} to run {run_id}")

    def do_export(self, run_id: int, output: str | None, **_) -> None:
        text = export_json(self.get_run(run_id))
        if not output:
            self.stdout.write(text)
            return
        try:
            Path(output).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}")
        self.stdout.write(f"exported run {run_id} to {output}")

    def do_replay(self, file: str, **_) -> None:
        try:
            document = load_export(sys.stdin if file == "-" else file)
        except ExportError as exc:
            raise CommandError(str(exc))
        report = replay(document)
        self.stdout.write(str(report))
        if not report.ok:
            raise CommandError(f"not safe for this run: the current code {OUTCOMES[report.outcome]}")

    def do_check(self, statuses, workflows, run_ids, no_save: bool, **_) -> None:
        statuses = statuses or list(replaycheck.IN_FLIGHT)
        report = replaycheck.check_runs(statuses=statuses, workflows=workflows, run_ids=run_ids)
        for name in sorted(report.workflows):
            check = report.workflows[name]
            self.stdout.write(check.summary())
            for finding in check.findings:
                self.stdout.write("\n".join(f"  {line}" for line in finding.lines()))
        self.stdout.write(
            f"checked {report.runs} runs of {len(report.workflows)} workflows in {report.seconds:.2f} s: "
            + ("all replay cleanly" if report.ok else f"{report.unsafe} would diverge")
        )
        if not no_save:
            selection = {"statuses": statuses, "workflows": workflows, "run_ids": run_ids}
            ReplayCheck.keep(report, by=self.actor, selection=selection)
        if not report.ok:
            raise CommandError(
                f"{report.unsafe} in-flight runs would not replay on this code; do not deploy it"
            )

    def do_prune(
        self, older_than, statuses: list[str] | None, batch_size: int, dry_run: bool, show: int, **_
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if show < 0:
            raise CommandError("--show must be 0 or more")
        report = retention.prune(
            older_than,
            statuses=statuses or retention.DEFAULT_STATUSES,
            batch_size=batch_size,
            dry_run=dry_run,
            shown=show,
            by=self.actor,
        )
        self.stdout.write(str(report))
        if report.runs:
            self.stdout.write(report.listing())
