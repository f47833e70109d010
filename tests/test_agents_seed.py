"""`manage.py seed_demo`: demo runs on first start only, one that fails and one awaiting approval."""

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from agentkit import fake
from agentkit.models import Order
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep
from runs.workflow import registry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    fake.reset()


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def by_key(key):
    return Run.objects.get(dedupe_key=f"demo:{key}")


def test_it_starts_the_demo_runs_once(doorbells):
    first = seed()
    assert "Created 6 demo shop orders" in first
    assert "Started 9 demo agent runs" in first
    assert "FAILS: the payment gateway is down" in first
    assert 'WAITS for approval: send signal "approval"' in first
    assert Run.objects.count() == 9
    assert len(doorbells.rung) == 9

    again = seed()
    assert again.strip() == "Demo runs were seeded before (9 runs); nothing started."
    assert Run.objects.count() == 9
    assert Order.objects.count() == 6


def test_it_leaves_one_failed_run_to_recover_and_one_waiting_for_approval(doorbells):
    seed()
    start = timezone.now()
    doorbells.drain()
    for seconds in range(10, 100, 10):  # retry backoffs pass; the outage (3 minutes) does not
        with time_machine.travel(start + timedelta(seconds=seconds), tick=False):
            sweep()
            doorbells.drain()

    statuses = dict(Run.objects.values_list("dedupe_key", "status"))
    assert statuses == {
        "demo:refund-broken": Status.SUCCEEDED,
        "demo:refund-question": Status.SUCCEEDED,
        "demo:refund-outage": Status.FAILED,
        "demo:research-idempotency": Status.SUCCEEDED,
        "demo:research-recovery": Status.SUCCEEDED,
        "demo:approval-waiting": Status.WAITING,
        "demo:approval-escalates": Status.WAITING,
        "demo:shop-assistant": Status.WAITING,
        "demo:shop-assistant-question": Status.SUCCEEDED,
    }
    failed = by_key("refund-outage")
    assert failed.error_type == "PaymentTimeout"
    waiting = by_key("approval-waiting")
    assert (waiting.wait_kind, waiting.wait_signal) == (WaitKind.SIGNAL, "approval")
    assistant = by_key("shop-assistant")
    assert (assistant.wait_kind, assistant.wait_signal) == (WaitKind.SIGNAL, "approval")
    assert "issue_refund" in assistant.wait_prompt
    escalated = by_key("approval-escalates")
    assert escalated.live_checkpoints().filter(name="tool:escalate").exists()

    # Once the outage is over, the operator's resume succeeds.
    with time_machine.travel(start + timedelta(minutes=4), tick=False):
        failed.resume(by="operator", reason="gateway is back")
        assert doorbells.drain() == ["succeeded"]
    assert Order.objects.get(number="A-1005").status == "refunded"


def test_it_says_what_is_missing_when_the_demo_workflows_are_not_registered(monkeypatch):
    monkeypatch.setattr(registry, "names", lambda: ["something_else"])
    with pytest.raises(CommandError, match=r"Add agentkit\.demos to DURABLE_WORKFLOW_MODULES"):
        seed()
