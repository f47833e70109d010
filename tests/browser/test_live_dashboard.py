"""The dashboard stays live in a real browser: the list follows changes made elsewhere,
and a decision is taken from the inbox without leaving it."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import AuditEntry, Run, Status
from tests import factories
from tests.browser.test_dashboard import confirm, settle
from tests.factories import make_failed_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

POLL_WAIT = 15_000  # ms: three of the list's polls


def test_the_list_shows_a_status_change_and_a_new_run_without_a_reload(operator_page, worker):
    page = operator_page
    failed = make_failed_run()
    page.goto("/?status=failed")
    expect(page.locator(f"#run-{failed.pk}")).to_contain_text("failed")
    page.evaluate("window.__sameDocument = true")

    # Changed elsewhere (the admin, the CLI, another operator): it leaves the filter.
    Run.objects.filter(pk=failed.pk).update(status=Status.CANCELLED, updated_at=timezone.now())
    another = make_failed_run()

    # The list polls every 5 s: longer than expect's own default wait.
    expect(page.locator(f"#run-{another.pk}")).to_contain_text("failed", timeout=POLL_WAIT)  # a new run
    expect(page.locator(f"#run-{failed.pk}")).to_have_count(0)  # and one that left the filter goes
    expect(page.locator("#run-counts .count.st-failed .n")).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True


def test_the_list_does_not_poll_while_the_tab_is_hidden(operator_page, worker):
    page = operator_page
    page.goto("/")
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/runs/rows/" in request.url else None)
    expect(page.locator("#live-poller")).to_have_attribute("data-live", "")
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    hidden_from = len(polls)
    run = make_failed_run()
    page.wait_for_timeout(6_000)  # longer than the poll period: no request goes out
    assert len(polls) == hidden_from
    expect(page.locator(f"#run-{run.pk}")).to_have_count(0)
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    expect(page.locator(f"#run-{run.pk}")).to_contain_text("failed")  # caught up at once


def test_the_inbox_approves_a_run_in_place(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("approval", {}), Status.WAITING)
    page.goto("/")
    expect(page.locator(".topbar .nav-count")).to_have_text("1")
    page.get_by_role("link", name="Inbox").click()
    page.wait_for_url("**/inbox/")
    item = page.locator(f"#inbox-{run.pk}")
    expect(item).to_contain_text("waits for “approve”")
    expect(item).to_contain_text("add: 42")  # what the step before the wait produced
    page.evaluate("window.__sameDocument = true")

    native = []  # the browser's own confirm() must not appear
    page.on("dialog", lambda dialog: (native.append(dialog.message), dialog.dismiss()))
    item.get_by_role("button", name="Approve").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.get_by_role("button", name="Yes, approve")).to_be_focused()  # keyboard ready
    dialog.press("Escape")  # closes without deciding
    expect(page.locator("dialog[open]")).to_have_count(0)
    assert Run.objects.get(pk=run.pk).status == Status.WAITING

    item.get_by_role("button", name="Approve").click()
    assert f"Approve run #{run.pk}" in confirm(page, reason="looks right")
    expect(page.locator(".msg.success")).to_contain_text(f"Run {run.pk} approved")
    assert native == []
    settle(worker, run, Status.SUCCEEDED)
    run.refresh_from_db()
    assert run.output == {"plan": 42, "outcome": "done", "by": "otto"}
    assert AuditEntry.objects.filter(run=run, reason="looks right").exists()  # typed in the dialog
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator(f"#inbox-{run.pk}")).to_have_count(0)


def test_a_failed_row_resumes_with_one_click_and_the_confirmation(operator_page, worker, monkeypatch):
    page = operator_page
    monkeypatch.setitem(factories.FLAKY, "fail", True)
    run = settle(worker, Run.objects.start("dashboard_flaky", {"order": "R-1"}), Status.FAILED)
    factories.FLAKY["fail"] = False
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    page.goto("/")
    # The row's dialog is drawn from the page's one template: its question, verb and warning.
    page.get_by_role("button", name=f"resume run {run.pk}").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("h2")).to_have_text(
        f"Resume run #{run.pk} (dashboard_flaky)? It continues from where it stopped."
    )
    expect(dialog.locator(".code-warning")).to_contain_text("old-build")
    expect(dialog.get_by_role("button", name="Yes, resume")).to_be_visible()
    dialog.get_by_role("button", name="No").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    # Asked again, the same dialog opens once more, not a second one.
    page.get_by_role("button", name=f"resume run {run.pk}").click()
    expect(page.locator(f"#row-resume-{run.pk} dialog")).to_have_count(1)
    assert f"Resume run #{run.pk}" in confirm(page, reason="fixed the card")
    page.wait_for_url(f"**/runs/{run.pk}/")
    settle(worker, run, Status.SUCCEEDED)
    assert AuditEntry.objects.filter(run=run, action="resume", reason="fixed the card").exists()
