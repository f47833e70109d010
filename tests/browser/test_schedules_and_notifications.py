"""The schedule and notification pages in a real browser: an operator pauses, resumes and
triggers a schedule, whose run executes; and sends a test notification to a webhook."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from notifications.models import Rule
from runs.models import AuditEntry, Run, Status
from schedules.models import Overlap, Schedule
from tests.processes import wait_for
from tests.test_notifications import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_pauses_resumes_and_triggers_a_schedule_whose_run_executes(operator_page, worker):
    page = operator_page
    schedule = Schedule.objects.create(
        name="digest",
        workflow="arithmetic",
        input={"a": 2, "b": 3},
        cron="0 7 * * 1-5",
        overlap=Overlap.ALLOW,
    )
    page.goto("/")
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="digest").click()
    expect(page.locator("#schedule-state")).to_have_text("running")
    expect(page.locator("#next-times li")).to_have_count(5)

    page.fill("#schedule-actions form:has(button:text('Pause')) input[name=reason]", "holiday")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#schedule-state")).to_have_text("paused")
    expect(page.locator("#next-times")).to_contain_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#schedule-state")).to_have_text("running")

    page.get_by_role("button", name="Trigger now").click()
    expect(page.locator("body")).to_contain_text("Schedule digest triggered: run")
    row = page.locator("#ticks tbody tr").first
    expect(row).to_contain_text("by hand")
    run = Run.objects.get(schedule_ticks__schedule=schedule)
    wait_for(lambda: Run.objects.get(pk=run.pk).status == Status.SUCCEEDED, 30, "the triggered run")
    row.get_by_role("link", name=f"#{run.pk}").click()
    expect(page.locator("body")).to_contain_text("succeeded")
    audited = AuditEntry.objects.filter(action__startswith="schedule").order_by("pk")
    assert list(audited.values_list("action", "reason", "actor_name")) == [
        ("schedule-pause", "holiday", "otto"),
        ("schedule-resume", "", "otto"),
        ("schedule-trigger", "", "otto"),
    ]


def test_an_operator_sends_a_test_notification_that_arrives_signed(operator_page, worker):
    page = operator_page
    hook = Receiver()
    try:
        Rule.objects.create(name="ops-hook", url=hook.url, secret="s3cret-hook", events=["failed"])
        page.goto("/")
        page.get_by_role("link", name="Notifications").click()
        page.locator("#rules tr", has_text="ops-hook").get_by_role("button", name="Send a test").click()
        wait_for(lambda: len(hook.accepted()) == 1, 30, "the test delivery")
        ((_, headers, _),) = hook.requests
        assert headers["X-Durable-Signature"].startswith("sha256=")
        (body,) = hook.accepted()
        assert body["event"] == "test" and body["rule"] == "ops-hook"
        page.reload()
        expect(page.locator("#deliveries tbody tr").first).to_contain_text("ops-hook")
        expect(page.locator("#deliveries tbody tr").first).to_contain_text("succeeded")
    finally:
        hook.server.shutdown()
