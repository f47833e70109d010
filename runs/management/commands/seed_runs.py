"""Seed synthetic runs, with their checkpoints, failed attempts and audit entries.

For demos and for measuring page speed: `manage.py seed_runs 1000000` writes a
million runs in batches (one transaction per batch), so memory stays flat. The
rows are written directly with bulk_create; no workflow code runs and no
doorbell rings. Creation times are spread over the last `--hours`, in id order,
as real runs would be.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from agentkit.models import ProviderCall
from runs.models import AuditEntry, Run, Status, WaitKind
from steps.models import Attempt, Checkpoint, CheckpointStatus

# How often each status is seeded, in percent.
STATUS_WEIGHTS = {
    Status.SUCCEEDED: 62,
    Status.FAILED: 10,
    Status.DEAD: 2,
    Status.CANCELLED: 4,
    Status.RUNNING: 6,
    Status.WAITING: 10,
    Status.PENDING: 6,
}

WORKFLOWS = {
    "research_agent": ["plan", "llm_call", "web_search", "read_page", "llm_call", "summarize"],
    "support_triage": [
        "classify_ticket",
        "lookup_customer",
        "llm_draft_reply",
        "signal:approve",
        "send_reply",
    ],
    "invoice_payment": ["validate_invoice", "charge_card", "send_receipt"],
    "nightly_report": ["fetch_metrics", "aggregate", "render_pdf", "email_report"],
}

# Model of the seeded LLM steps (priced like claude-sonnet-4-5: $3 / $15 per million tokens).
SEED_MODEL = "claude-sonnet-4-5"

ERRORS = [
    ("TimeoutError", "payment provider did not answer in time"),
    ("RateLimitError", "429 Too Many Requests: rate limit exceeded for model claude-sonnet"),
    ("ToolOutputError", "tool output is not valid JSON: Expecting ',' delimiter: line 3 column 5"),
    ("ConnectionError", "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded"),
    ("KeyError", "'customer_id'"),
    ("PermissionError", "account locked"),
    ("ValueError", "invoice total does not match the sum of its lines (1290.00 != 1209.00)"),
]


def traceback_for(step: str, error_type: str, message: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "runs/engine.py", line 192, in _execute\n'
        "    value = call_with_timeout(definition.fn, args, kwargs, definition.timeout)\n"
        f'  File "agentkit/steps.py", line 88, in {step}\n'
        "    response = client.request(payload)\n"
        f"{error_type}: {message}\n"
    )


@dataclass
class Plan:
    """What one synthetic run looks like before its rows are built."""

    run: Run
    steps: list[str]
    fail_at: int | None = None  # position of a final failed checkpoint
    retrying_at: int | None = None  # position with failed attempts and no checkpoint yet


class Seeder:
    def __init__(self, rng: random.Random, now: datetime, hours: float, total: int, max_steps: int):
        self.rng = rng
        self.now = now
        self.start = now - timedelta(hours=hours)
        self.span = timedelta(hours=hours)
        self.total = max(total, 1)
        self.max_steps = max_steps
        self.statuses = list(STATUS_WEIGHTS)
        self.weights = list(STATUS_WEIGHTS.values())

    # --- runs -------------------------------------------------------------------

    def plan(self, index: int, steps: int | None = None, status: str | None = None) -> Plan:
        rng = self.rng
        workflow = rng.choice(list(WORKFLOWS))
        status = status or rng.choices(self.statuses, self.weights)[0]
        names = self.step_names(workflow, steps)
        created = self.start + self.span * (index / self.total)
        # Active runs are recent, whatever their index says.
        if status in (Status.RUNNING, Status.PENDING):
            created = max(created, self.now - timedelta(minutes=rng.uniform(0.5, 30)))
        run = Run(workflow=workflow, input=self.input_for(workflow, index), status=status, created_at=created)
        plan = Plan(run=run, steps=names)
        getattr(self, f"shape_{status}")(plan)
        run.updated_at = run.finished_at or self.now
        return plan

    def step_names(self, workflow: str, steps: int | None) -> list[str]:
        base = WORKFLOWS[workflow]
        if steps is None:
            steps = self.rng.randint(1, max(self.max_steps, 1))
        return [base[i % len(base)] for i in range(steps)]

    def input_for(self, workflow: str, index: int) -> dict:
        rng = self.rng
        if workflow == "invoice_payment":
            return {"invoice": f"INV-{index:07d}", "cents": rng.randint(500, 250_000)}
        if workflow == "support_triage":
            return {"ticket": index, "subject": rng.choice(["refund", "login problem", "invoice copy"])}
        if workflow == "research_agent":
            return {"question": rng.choice(["market size of heat pumps", "compare vector DBs", "EU AI act"])}
        return {"date": (self.now - timedelta(days=1)).date().isoformat()}

    def began(self, run: Run) -> datetime:
        run.started_at = run.created_at + timedelta(seconds=self.rng.uniform(0.01, 2))
        return run.started_at

    def shape_succeeded(self, plan: Plan) -> None:
        run = plan.run
        run.steps_done = len(plan.steps)
        run.current_step = plan.steps[-1]
        run.finished_at = self.began(run) + timedelta(seconds=self.rng.uniform(0.5, 90) * len(plan.steps))
        run.output = {"ok": True, "steps": len(plan.steps)}

    def shape_failed(self, plan: Plan) -> None:
        run = plan.run
        plan.fail_at = self.rng.randrange(len(plan.steps))
        run.steps_done = plan.fail_at + 1
        run.current_step = plan.steps[plan.fail_at]
        run.error_position = plan.fail_at
        error_type, message = self.rng.choice(ERRORS)
        run.error_type = error_type
        run.error_message = f"step {run.current_step!r} failed: {message}"
        run.error_traceback = traceback_for(run.current_step, error_type, message)
        run.finished_at = self.began(run) + timedelta(seconds=self.rng.uniform(1, 120) * run.steps_done)

    def shape_dead(self, plan: Plan) -> None:
        run = plan.run
        run.steps_done = self.rng.randrange(len(plan.steps))
        run.current_step = plan.steps[run.steps_done - 1] if run.steps_done else ""
        run.recovery_count = 6
        run.error_type = "WorkerLost"
        run.error_message = "worker lost 6 times; dead-lettered for an operator"
        run.finished_at = self.began(run) + timedelta(minutes=self.rng.uniform(1, 30))

    def shape_cancelled(self, plan: Plan) -> None:
        run = plan.run
        run.steps_done = self.rng.randrange(len(plan.steps))
        run.current_step = plan.steps[run.steps_done - 1] if run.steps_done else ""
        run.finished_at = self.began(run) + timedelta(minutes=self.rng.uniform(0.1, 20))

    def shape_running(self, plan: Plan) -> None:
        run = plan.run
        run.steps_done = self.rng.randrange(len(plan.steps))
        run.current_step = plan.steps[run.steps_done - 1] if run.steps_done else ""
        run.lease_owner = f"worker-{self.rng.randint(1, 4)}@seed:{self.rng.randint(1000, 9999)}"
        run.lease_token = "seed"
        self.began(run)
        run.recovery_count = self.rng.choice([0, 0, 0, 1])

    def shape_waiting(self, plan: Plan) -> None:
        run = plan.run
        run.steps_done = self.rng.randrange(len(plan.steps))
        run.current_step = plan.steps[run.steps_done - 1] if run.steps_done else ""
        self.began(run)
        run.wait_position = run.steps_done
        kind = self.rng.choice([WaitKind.SIGNAL, WaitKind.SIGNAL, WaitKind.RETRY, WaitKind.SLEEP])
        run.wait_kind = kind
        if kind == WaitKind.SIGNAL:
            run.wait_signal = "approve"
        elif kind == WaitKind.RETRY:
            plan.retrying_at = run.steps_done
            run.wake_at = self.now + timedelta(seconds=self.rng.uniform(5, 600))
        else:
            run.wake_at = self.now + timedelta(hours=self.rng.uniform(1, 72))

    def shape_pending(self, plan: Plan) -> None:
        plan.run.dispatched_at = plan.run.created_at

    # --- steps ------------------------------------------------------------------

    def rows_for(self, plan: Plan) -> tuple[list[Checkpoint], list[Attempt], list[AuditEntry]]:
        run = plan.run
        checkpoints: list[Checkpoint] = []
        attempts: list[Attempt] = []
        moment = run.started_at or run.created_at
        for position in range(run.steps_done):
            name = plan.steps[position]
            failures = self.failures_before(position, plan)
            for number in range(1, failures + 1):
                moment, attempt = self.attempt(run, position, name, number, moment)
                attempts.append(attempt)
            if position == plan.fail_at:
                moment, attempt = self.attempt(
                    run, position, name, failures + 1, moment, error=run.error_type
                )
                attempts.append(attempt)
                checkpoints.append(self.failed_checkpoint(run, position, name, attempt))
                break
            checkpoints.append(self.checkpoint(run, position, name, failures + 1, moment))
            moment = checkpoints[-1].finished_at
        if plan.retrying_at is not None:
            name = plan.steps[plan.retrying_at]
            for number in range(1, self.rng.randint(1, 3) + 1):
                moment, attempt = self.attempt(run, plan.retrying_at, name, number, moment)
                attempts.append(attempt)
        if run.status in (Status.SUCCEEDED, Status.FAILED) and checkpoints:
            # A finished run ends with its last step.
            run.finished_at = run.updated_at = checkpoints[-1].finished_at + timedelta(milliseconds=20)
        return checkpoints, attempts, self.audit_for(run)

    def failures_before(self, position: int, plan: Plan) -> int:
        if position == plan.fail_at:
            return self.rng.choice([0, 1, 2, 3])
        return 1 if self.rng.random() < 0.06 else 0

    def attempt(self, run: Run, position: int, name: str, number: int, moment, error: str = ""):
        error_type, message = self.rng.choice(ERRORS)
        if error:
            error_type, message = error, run.error_message.split(": ", 1)[-1]
        finished = moment + timedelta(seconds=self.rng.uniform(0.05, 30))
        attempt = Attempt(
            run=run,
            position=position,
            name=name,
            number=number,
            started_at=moment,
            finished_at=finished,
            error_type=error_type,
            error_message=message,
            error_traceback=traceback_for(name, error_type, message),
        )
        return finished + timedelta(seconds=self.rng.uniform(0.5, 8)), attempt

    def checkpoint(self, run: Run, position: int, name: str, attempts: int, moment) -> Checkpoint:
        seconds = self.rng.lognormvariate(0, 1.2) * (4 if name.startswith("llm") else 0.6)
        output: object = {"ok": True, "position": position}
        meta = None
        if name.startswith("llm"):
            tokens_in, tokens_out = self.rng.randint(200, 6000), self.rng.randint(50, 1200)
            output = {"text": f"Draft {position}: " + "lorem ipsum " * self.rng.randint(2, 20)}
            meta = {
                "provider": "seed",
                "model": SEED_MODEL,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cost_usd": round((tokens_in * 3.0 + tokens_out * 15.0) / 1e6, 8),
                "latency_ms": int(seconds * 1000),
            }
        elif name == "signal:approve":
            output = {"payload": {"approved": True, "by": "ops"}, "signal_id": None}
        return Checkpoint(
            run=run,
            position=position,
            name=name,
            status=CheckpointStatus.SUCCEEDED,
            output=output,
            attempts=attempts,
            started_at=moment,
            finished_at=moment + timedelta(seconds=seconds),
            meta=meta,
        )

    def failed_checkpoint(self, run: Run, position: int, name: str, attempt: Attempt) -> Checkpoint:
        return Checkpoint(
            run=run,
            position=position,
            name=name,
            status=CheckpointStatus.FAILED,
            error_type=attempt.error_type,
            error_message=attempt.error_message,
            error_traceback=attempt.error_traceback,
            attempts=attempt.number,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
        )

    def provider_calls(self, checkpoints: list[Checkpoint]) -> list[ProviderCall]:
        """What the model provider billed for the seeded LLM steps, as agentkit.llm records it."""
        return [
            ProviderCall(
                run=cp.run,
                workflow=cp.run.workflow,
                position=cp.position,
                provider="seed",
                model=SEED_MODEL,
                input_tokens=cp.meta["input_tokens"],
                output_tokens=cp.meta["output_tokens"],
                cost_usd=cp.meta["cost_usd"],
                latency_ms=cp.meta["latency_ms"],
                created_at=cp.finished_at,
            )
            for cp in checkpoints
            if cp.meta
        ]

    def audit_for(self, run: Run) -> list[AuditEntry]:
        return [
            AuditEntry(
                run=run, actor_name="system", action="recover", reason="lease lapsed", created_at=moment
            )
            for moment in self.recoveries(run)
        ]

    def recoveries(self, run: Run) -> list[datetime]:
        if not run.recovery_count:
            return []
        begin = run.started_at or run.created_at
        return [begin + timedelta(seconds=5 * (i + 1)) for i in range(run.recovery_count)]


def analyze() -> None:
    """Refresh PostgreSQL's statistics and visibility map after the bulk load, as one would
    after any: until autovacuum gets to it, the planner knows nothing of the new rows and
    index-only scans read the table too. (SQLite keeps no statistics unless asked.)"""
    if connection.vendor != "postgresql":
        return
    tables = [model._meta.db_table for model in (Run, Checkpoint, Attempt, AuditEntry, ProviderCall)]
    # VACUUM cannot run inside a transaction (a caller's atomic block, a test); ANALYZE can.
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
    with connection.cursor() as cursor:
        cursor.execute(f"{command} {', '.join(map(connection.ops.quote_name, tables))}")


class Command(BaseCommand):
    help = "Seed N synthetic runs with steps, failed attempts and audit entries (demos, page speed)."

    def add_arguments(self, parser):
        parser.add_argument("count", nargs="?", type=int, default=300, help="how many runs (default 300)")
        parser.add_argument("--batch", type=int, default=2000, help="runs per transaction (default 2000)")
        parser.add_argument("--max-steps", type=int, default=12, help="most steps per run (default 12)")
        parser.add_argument(
            "--hours", type=float, default=48, help="spread over the last N hours (default 48)"
        )
        parser.add_argument(
            "--long-run", type=int, default=0, metavar="STEPS", help="add one run with STEPS steps"
        )
        parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable data")

    def handle(
        self, *args, count: int, batch: int, max_steps: int, hours: float, long_run: int, seed, **options
    ):
        if count < 0 or batch < 1 or max_steps < 1 or hours <= 0 or long_run < 0:
            raise CommandError("count and --long-run must be >= 0, --batch and --max-steps >= 1, --hours > 0")
        seeder = Seeder(random.Random(seed), timezone.now(), hours, count, max_steps)
        started = time.monotonic()
        totals = [0, 0, 0]
        for first in range(0, count, batch):
            plans = [seeder.plan(index) for index in range(first, min(first + batch, count))]
            self.write(seeder, plans, totals)
            if options["verbosity"] > 1:
                self.stdout.write(f"  {min(first + batch, count)} / {count} runs")
        if long_run:
            self.write(seeder, [seeder.plan(count, steps=long_run, status=Status.SUCCEEDED)], totals)
        runs = count + (1 if long_run else 0)
        analyze()
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {runs} runs, {totals[0]} checkpoints, {totals[1]} failed attempts, "
                f"{totals[2]} audit entries in {time.monotonic() - started:.1f} s."
            )
        )

    def write(self, seeder: Seeder, plans: list[Plan], totals: list[int]) -> None:
        checkpoints, attempts, audit = [], [], []
        for plan in plans:
            run_checkpoints, run_attempts, run_audit = seeder.rows_for(plan)
            checkpoints += run_checkpoints
            attempts += run_attempts
            audit += run_audit
        calls = seeder.provider_calls(checkpoints)
        for plan in plans:
            # A run last changed when it was seeded at the latest, as a real one would have.
            plan.run.updated_at = min(plan.run.updated_at, seeder.now)
        with transaction.atomic():
            # Sets each run's id (RETURNING); the rows above pick it up when they are saved.
            Run.objects.bulk_create([plan.run for plan in plans])
            Checkpoint.objects.bulk_create(checkpoints, batch_size=5000)
            Attempt.objects.bulk_create(attempts, batch_size=5000)
            AuditEntry.objects.bulk_create(audit, batch_size=5000)
            ProviderCall.objects.bulk_create(calls, batch_size=5000)
        totals[0] += len(checkpoints)
        totals[1] += len(attempts)
        totals[2] += len(audit)
