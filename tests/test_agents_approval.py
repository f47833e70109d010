"""The approval agent: prepares a refund, waits for a human until a deadline, escalates, then acts."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agentkit import demos, fake
from agentkit.models import Notification, Order, OrderStatus, Payment
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep

pytestmark = pytest.mark.django_db(transaction=True)

REQUEST = {"order": "A-1003", "reason": "Rotor arrived cracked", "deadline_seconds": 3600}


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 0
    fake.reset()
    demos.ensure_demo_orders()


def start(doorbells, **changes):
    run = Run.objects.start("approval_agent", {**REQUEST, **changes})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    return run


def later(run, seconds):
    """Travel past a deadline and let the sweep wake the run."""
    return time_machine.travel(timezone.now() + timedelta(seconds=seconds), tick=False)


def test_it_prepares_a_proposal_and_waits_for_approval_without_a_worker(doorbells):
    run = start(doorbells)
    assert run.status == Status.WAITING
    assert (run.wait_kind, run.wait_signal) == (WaitKind.SIGNAL, "approval")
    assert run.wake_at == pytest.approx(timezone.now() + timedelta(hours=1), abs=timedelta(minutes=1))
    proposal = run.live_checkpoints().get(name="llm:prepare").output["data"]
    assert proposal["risk"] == "high"
    assert proposal["summary"].startswith("Refund $320.00 to Alan Turing for order A-1003")


def test_it_refunds_once_approved(doorbells):
    run = start(doorbells)
    run.send_signal("approval", {"approved": True, "note": "ok"}, by="alice")
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["outcome"] == "refunded"
    assert run.output["escalated"] is None
    assert Payment.objects.get().amount_cents == -32_000
    assert Order.objects.get(number="A-1003").status == OrderStatus.REFUNDED
    assert Notification.objects.count() == 0


def test_it_does_nothing_when_rejected(doorbells):
    run = start(doorbells)
    run.send_signal("approval", {"approved": False, "note": "photos first"}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["outcome"] == "rejected"
    assert run.output["decision"]["note"] == "photos first"
    assert Payment.objects.count() == 0


def test_it_keeps_an_approval_sent_before_it_started_waiting(doorbells):
    run = Run.objects.start("approval_agent", REQUEST)
    run.send_signal("approval", {"approved": True}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output["outcome"] == "refunded"


def test_it_escalates_after_the_deadline_then_acts_on_the_late_approval(doorbells):
    run = start(doorbells, escalate_to="lead@example.com")
    with later(run, 3601):
        assert sweep().woken == 1
        assert doorbells.drain() == ["ok/signal"]

    run.refresh_from_db()
    assert run.status == Status.WAITING
    note = Notification.objects.get()
    assert note.recipient == "lead@example.com"
    assert note.subject == "Overdue approval: refund $320.00 for order A-1003"
    assert note.run_id == run.pk

    run.send_signal("approval", {"approved": True}, by="lead")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["outcome"] == "refunded"
    assert run.output["escalated"]["to"] == "lead@example.com"
    assert Payment.objects.count() == 1


def test_it_rejects_when_the_escalation_deadline_passes_too(doorbells):
    run = start(doorbells, escalation_deadline_seconds=600)
    with later(run, 3601):
        sweep()
        doorbells.drain()
    with later(run, 3601 + 601):
        assert sweep().woken == 1
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.output["outcome"] == "rejected"
    assert run.output["decision"]["note"] == "nobody decided before the escalation deadline"
    assert Payment.objects.count() == 0
    assert Notification.objects.count() == 1
