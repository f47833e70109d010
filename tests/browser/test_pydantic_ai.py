"""The demo Pydantic AI agent in a real browser: its approval in the inbox, its steps on the run page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from agentkit import demos
from agentkit.models import Payment
from runs.models import Run, Status
from tests.browser.conftest import screenshot
from tests.browser.test_dashboard import confirm, settle

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _orders(settings):
    settings.AGENTS_PAYMENT_FAILURE_RATE = 0
    settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY = 0
    demos.ensure_demo_orders()


def test_a_newcomer_approves_the_agents_refund_in_the_inbox_and_reads_its_steps(operator_page, worker):
    page = operator_page
    ticket = {"ticket": "My slide rule from order A-1006 arrived damaged. Could I have a refund?"}
    run = settle(worker, Run.objects.start("shop_assistant", ticket), Status.WAITING)

    page.goto("/inbox/")
    expect(page.locator("main")).to_contain_text('asks to call issue_refund({"amount_cents": 4200')
    page.get_by_role("button", name=f"Approve run {run.pk}").click()
    confirm(page, "damaged in transit")
    settle(worker, run, Status.SUCCEEDED)
    assert "Refunded $42.00 for order A-1006" in run.output["reply"]
    assert Payment.objects.count() == 1

    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator(".llm-step")).to_have_count(3)  # look the order up, refund it, answer
    expect(page.locator(".llm-step").first).to_contain_text("function · fake-1")
    expect(page.get_by_text("tool:issue_refund").first).to_be_visible()
    screenshot(page, "pydantic-ai-run", full_page=True)
