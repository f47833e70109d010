"""The demo Pydantic AI agent: looks an order up, refunds it (a large refund after a person's approval)."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agentkit import demos
from agentkit.integrations.pydantic_ai import RAISED
from agentkit.models import Order, OrderStatus, Payment, ProviderCall
from runs.export import export_json
from runs.models import Run, Status
from runs.recovery import sweep
from runs.testing import assert_replays
from steps.models import Checkpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 0
    demos.ensure_demo_orders()


def steps(run):
    return list(Checkpoint.objects.filter(run=run).order_by("position").values_list("name", flat=True))


def test_it_refunds_a_small_order_at_once(doorbells):
    run = Run.objects.start("shop_assistant", {"ticket": "Order A-1002 arrived damaged, please refund it."})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["reply"].startswith("Thank you for writing to us. Refunded $12.50 for order A-1002")
    assert run.output["model_requests"] == 3
    model = "llm:shop_assistant"
    assert steps(run) == [model, "tool:look_up_order", model, "tool:issue_refund", model]
    payment = Payment.objects.get()
    refund = Checkpoint.objects.get(run=run, name="tool:issue_refund")
    assert payment.idempotency_key == run.step_idempotency_key(refund.position)
    assert Order.objects.get(number="A-1002").status == OrderStatus.REFUNDED
    assert ProviderCall.objects.filter(run=run).exclude(cost_usd=0).count() == 3  # priced as fake-1


def test_a_large_refund_waits_for_a_person_then_is_paid_once(doorbells):
    run = Run.objects.start("shop_assistant", {"ticket": "Order A-1006 arrived broken. Refund please."})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert 'issue_refund({"amount_cents": 4200, "order_number": "A-1006"})' in run.wait_prompt
    assert not Payment.objects.exists()

    run.send_signal("approval", {"approved": True}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert "Refunded $42.00 for order A-1006" in run.output["reply"]
    assert run.output["model_requests"] == 3  # counted before and after the wait
    assert Payment.objects.count() == 1
    assert steps(run).count("tool:issue_refund") == 2  # asked for approval, then paid


def test_a_payment_timeout_is_retried_with_the_same_idempotency_key(doorbells, settings):
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 1
    run = Run.objects.start("shop_assistant", {"ticket": "Order A-1002 never arrived. Refund?"})
    assert doorbells.drain() == ["ok/retry"]
    with time_machine.travel(timezone.now() + timedelta(seconds=5), tick=False):
        sweep()
        assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert Payment.objects.count() == 1


def test_workers_that_never_run_it_never_load_pydantic_ai():
    code = "import django; django.setup(); import agentkit.demos, sys; print('pydantic_ai' in sys.modules)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.strip() == "False"


def test_a_tools_model_retry_is_recorded_and_replayed_as_such(doorbells, tmp_path):
    run = Run.objects.start("shop_assistant", {"ticket": "Where is order A-9999?"})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.output["reply"] == "I could not find order A-9999. Please check it."
    lookup = Checkpoint.objects.get(run=run, name="tool:look_up_order")
    assert lookup.output[RAISED] == "ToolRetryError"
    assert lookup.output["part"]["content"] == "There is no order A-9999; check the number."
    export = tmp_path / "run.json"
    export.write_text(export_json(run))
    assert assert_replays(export, outcome="clean").output == run.output
