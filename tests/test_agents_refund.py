"""The refund agent: triage, order lookup, a refund through a flaky payment API, paid once."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agentkit import demos, fake, faults
from agentkit.models import Order, OrderStatus, Payment, PaymentRequest, ProviderCall
from runs.models import Run, Status
from runs.recovery import sweep
from steps.models import Attempt, Checkpoint
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)

TICKET = "Hello, order A-1001 arrived broken. I would like a refund please."


class PowerCut(BaseException):
    """Escapes everything, like the worker process dying."""


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 0
    fake.reset()
    demos.ensure_demo_orders()
    yield
    fake.reset()


def settle(doorbells, minutes=30):
    """Answer doorbells and let every retry backoff and deadline elapse in turn."""
    start = timezone.now()
    doorbells.drain()
    for step in range(1, minutes + 1):
        with time_machine.travel(start + timedelta(minutes=step), tick=False):
            if not sweep():
                break
            doorbells.drain()


def step_names(run):
    return [c.name for c in run.live_checkpoints()]


def test_it_triages_refunds_records_and_drafts_a_reply(doorbells):
    run = Run.objects.start("refund_agent", {"ticket": TICKET})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert step_names(run) == [
        "llm:triage",
        "tool:look_up_order",
        "tool:issue_refund",
        "tool:mark_order_refunded",
        "llm:draft_reply",
    ]
    assert run.output["refunded"] is True
    assert run.output["order"] == "A-1001"
    assert run.output["reply"].startswith("Hi Ada,")
    assert "$49.99" in run.output["reply"]
    order = Order.objects.get(number="A-1001")
    assert order.status == OrderStatus.REFUNDED
    assert order.refund_reference == run.output["receipt"]["reference"]
    payment = Payment.objects.get()
    assert payment.amount_cents == -4999
    assert payment.idempotency_key == run.step_idempotency_key(2)


def test_it_pays_exactly_once_when_the_payment_api_times_out_after_paying_then_answers(doorbells, settings):
    # Every request times out after the money moved, three times per key; the fourth answers.
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 3
    run = Run.objects.start("refund_agent", {"ticket": TICKET})
    settle(doorbells)

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error_message
    assert Payment.objects.count() == 1
    requests = list(PaymentRequest.objects.values_list("outcome", flat=True))
    assert requests == ["timeout-after", "timeout-after", "timeout-after", "replayed"]
    assert set(PaymentRequest.objects.values_list("idempotency_key", flat=True)) == {
        run.step_idempotency_key(2)
    }
    attempts = Attempt.objects.filter(run=run, name="tool:issue_refund")
    assert [a.error_type for a in attempts] == ["PaymentTimeout"] * 3
    assert Checkpoint.objects.get(run=run, name="tool:issue_refund").attempts == 4
    assert run.output["receipt"]["replayed"] is True
    assert Order.objects.get(number="A-1001").refunded_cents == 4999


def test_it_pays_once_when_the_worker_dies_after_the_payment_before_its_checkpoint(doorbells, monkeypatch):
    real_refund = demos.payments.refund
    dying = {"armed": True}

    def refund_then_die(*args, **kwargs):
        receipt = real_refund(*args, **kwargs)
        if dying.pop("armed", False):
            raise PowerCut("the worker lost power right after the payment API answered")
        return receipt

    monkeypatch.setattr(demos.payments, "refund", refund_then_die)
    run = Run.objects.start("refund_agent", {"ticket": TICKET})
    with pytest.raises(PowerCut):
        doorbells.drain()
    assert Payment.objects.count() == 1
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING

    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]

    assert Payment.objects.count() == 1
    assert list(PaymentRequest.objects.values_list("outcome", flat=True)) == ["paid", "replayed"]
    # The model calls made before the crash were not made again.
    assert ProviderCall.objects.filter(run=run).count() == 2


def test_it_fails_during_a_gateway_outage_and_an_operator_resume_pays_once(doorbells):
    demos.outage("A-1001", seconds=3600)
    run = Run.objects.start("refund_agent", {"ticket": TICKET})
    settle(doorbells)

    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert run.error_type == "PaymentTimeout"
    assert "simulated outage" in run.error_message
    assert Payment.objects.count() == 0

    Order.objects.filter(number="A-1001").update(gateway_down_until=None)
    run.resume(by="operator", reason="gateway is back")
    assert doorbells.drain() == ["succeeded"]
    assert Payment.objects.count() == 1
    assert Order.objects.get(number="A-1001").status == OrderStatus.REFUNDED


def test_it_answers_a_question_without_refunding(doorbells):
    run = Run.objects.start("refund_agent", {"ticket": "When do you ship to Norway?", "customer": "Ole"})
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert step_names(run) == ["llm:triage", "llm:draft_reply"]
    assert run.output["intent"] == "question"
    assert run.output["refunded"] is False
    assert Payment.objects.count() == 0


def test_it_does_not_refund_an_order_twice_across_runs(doorbells):
    first = Run.objects.start("refund_agent", {"ticket": TICKET})
    doorbells.drain()
    second = Run.objects.start("refund_agent", {"ticket": TICKET})
    assert doorbells.drain() == ["succeeded"]
    second.refresh_from_db()
    assert second.output["refunded"] is False
    assert "already refunded" in second.output["reply"]
    assert Payment.objects.count() == 1
    assert Run.objects.get(pk=first.pk).output["refunded"] is True


def test_it_fails_for_good_on_an_unknown_order(doorbells):
    run = Run.objects.start("refund_agent", {"ticket": "Refund order Z-9999 please, it is broken"})
    assert doorbells.drain() == ["failed"]
    run.refresh_from_db()
    assert run.error_type == "NonRetryableError"
    assert "no order Z-9999" in run.error_message
    assert Attempt.objects.filter(run=run).count() == 1


def test_it_is_registered_as_faultable():
    assert {"refund_agent", "research_agent", "approval_agent"} <= faults.FAULTABLE
