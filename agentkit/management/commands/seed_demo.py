"""Start a handful of demo agent runs, once: `manage.py seed_demo`.

Idempotent: every demo run has a dedupe key, so a second start finds the runs of
the first and starts nothing. Among them, one refund fails (its payment gateway is
down for a few minutes, so resuming it later succeeds) and one run waits for a
human's approval.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from agentkit import demos
from runs.models import Run
from runs.workflow import registry

OUTAGE_SECONDS = 180


@dataclass(frozen=True)
class DemoRun:
    key: str
    workflow: str
    input: dict
    what: str


DEMO_RUNS = [
    DemoRun(
        "refund-broken",
        "refund_agent",
        {"ticket": "Hi, order A-1001 arrived broken: half the gears are bent. Can I get a refund?"},
        "refunds A-1001 (the payment API times out now and then: watch the retries)",
    ),
    DemoRun(
        "refund-question",
        "refund_agent",
        {"ticket": "Do you ship to Norway, and how long does it take?", "customer": "Ole"},
        "answers a question, no refund",
    ),
    DemoRun(
        "refund-outage",
        "refund_agent",
        {"ticket": "Order A-1005 never arrived. Please refund me."},
        f"FAILS: the payment gateway is down for {OUTAGE_SECONDS // 60} minutes; resume it after that",
    ),
    DemoRun(
        "research-idempotency",
        "research_agent",
        {"question": "How do idempotency keys make retrying a payment safe?"},
        "a short model/tool loop over the local corpus",
    ),
    DemoRun(
        "research-recovery",
        "research_agent",
        {"question": "When a worker crashes, how are its runs recovered and what happens to its steps?"},
        "a longer model/tool loop",
    ),
    DemoRun(
        "approval-waiting",
        "approval_agent",
        {"order": "A-1003", "reason": "Rotor arrived cracked", "deadline_seconds": 86_400},
        'WAITS for approval: send signal "approval" with {"approved": true}',
    ),
    DemoRun(
        "approval-escalates",
        "approval_agent",
        {"order": "A-1004", "reason": "Wrong nib size", "deadline_seconds": 60},
        "escalates after 1 minute without a decision, then waits again",
    ),
    DemoRun(
        "shop-assistant",
        "shop_assistant",
        {"ticket": "My slide rule from order A-1006 arrived damaged. Could I have a refund?"},
        'a Pydantic AI agent; WAITS for approval of its $42 refund: send "approval" with {"approved": true}',
    ),
    DemoRun(
        "shop-assistant-question",
        "shop_assistant",
        {"ticket": "Has order A-1002 shipped yet?"},
        "a Pydantic AI agent looks the order up and answers",
    ),
]


class Command(BaseCommand):
    help = "Start the demo agent runs (refund, research, approval, shop assistant) unless started before."

    def handle(self, *args, **options) -> None:
        missing = sorted(set(demos.WORKFLOWS) - set(registry.names()))
        if missing:
            raise CommandError(
                f"demo workflows not registered: {', '.join(missing)}. "
                "Add agentkit.demos to DURABLE_WORKFLOW_MODULES."
            )
        orders = demos.ensure_demo_orders()
        started = []
        for demo in DEMO_RUNS:
            dedupe_key = f"demo:{demo.key}"
            if demo.key == "refund-outage" and not Run.objects.filter(dedupe_key=dedupe_key).exists():
                demos.outage("A-1005", OUTAGE_SECONDS)
            run, created = Run.objects.start_or_get(
                demo.workflow, demo.input, dedupe_key=dedupe_key, by="seed_demo"
            )
            started.append((run, created, demo))
        self._report(orders, started)

    def _report(self, orders: int, started: list[tuple[Run, bool, DemoRun]]) -> None:
        new = sum(created for _, created, _ in started)
        if not new:
            self.stdout.write(f"Demo runs were seeded before ({len(started)} runs); nothing started.")
            return
        if orders:
            self.stdout.write(f"Created {orders} demo shop orders (A-1001 to A-1006).")
        self.stdout.write(f"Started {new} demo agent runs at {timezone.now():%H:%M:%S} UTC:")
        for run, created, demo in started:
            state = "started" if created else "exists "
            self.stdout.write(f"  {state} run #{run.pk:<5} {demo.workflow:<15} {demo.what}")
