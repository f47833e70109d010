"""Recovery in a real browser, from the landing page: edit and continue, bulk retry from a step
by filter, retry now, and the code-version warning. Each path is at most three clicks plus the
confirmation."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from runs.models import AuditEntry, Run, Status, WaitKind
from steps.models import Checkpoint
from tests import workflows
from tests.browser.conftest import screenshot
from tests.browser.test_dashboard import confirm, settle

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def flaky():
    from tests import factories

    factories.FLAKY["fail"] = True
    yield factories.FLAKY
    factories.FLAKY["fail"] = True


def test_edit_a_bad_value_and_continue_until_the_run_succeeds(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("pricing", {"name": "widget", "price": -5}), Status.FAILED)

    page.goto("/")
    page.locator(f"#run-{run.pk}").get_by_role("link").first.click()  # 1
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator("#run-live")).to_contain_text("invalid price -5")
    page.locator("#step-0").get_by_role("link", name="Edit and continue…").click()  # 2
    editor = page.locator("#step-0 textarea")
    expect(editor).to_be_visible()
    editor.fill('{"item": "widget", "price": 12}')
    page.locator("#step-0").get_by_role("button", name="Save and continue from here…").click()  # 3
    question = confirm(page, reason="feed had a sign error")
    assert "run every step after it again" in question

    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    assert Run.objects.get(pk=run.pk).output == {"invoiced": 12}
    expect(page.locator("#step-0 .superseded-cp")).to_have_count(1)
    expect(page.locator("#step-1 .superseded-cp")).to_contain_text("failed")  # kept, marked
    expect(page.locator("#step-1 .badge").first).to_have_text("succeeded")
    expect(page.locator("table.audit")).to_contain_text("edit and continue")
    expect(page.locator("table.audit")).to_contain_text("feed had a sign error")
    assert Checkpoint.objects.filter(run=run, superseded_at__isnull=False).count() == 2
    screenshot(page, "edit-and-continue", full_page=True)


def test_bulk_retry_from_a_step_by_filter_with_a_count_first(operator_page, worker, flaky):
    page = operator_page
    failed = [
        settle(worker, Run.objects.start("dashboard_flaky", {"order": f"D-{i}"}), Status.FAILED)
        for i in range(3)
    ]
    other = settle(worker, Run.objects.start("pricing", {"name": "x", "price": -1}), Status.FAILED)
    flaky["fail"] = False  # the quote service is back

    page.goto("/")
    page.get_by_role("link", name="Recover").click()  # 1
    form = page.locator("#recover-filters")
    form.get_by_label("Action").select_option("retry")
    form.get_by_label("Retry from step").fill("fetch_quote")
    form.get_by_label("Workflow").fill("dashboard_flaky")
    form.get_by_label("Status").select_option("failed")
    form.get_by_label("Failed at step").fill("fetch_quote")
    form.get_by_role("button", name="Preview").click()  # 2
    preview = page.locator("#recover-preview")
    expect(preview.locator("#recover-count")).to_contain_text("3 of them can be acted on")
    expect(preview.locator("#recover-sample tbody tr")).to_have_count(3)
    assert AuditEntry.objects.filter(action="retry").count() == 0  # a preview changes nothing
    screenshot(page, "bulk-recover-preview", full_page=True)

    preview.get_by_role("button", name="Retry 3 runs from fetch_quote…").click()  # 3
    assert "Retry 3 runs from step fetch_quote?" in confirm(page, reason="quote service back")
    expect(page.locator("#recover-progress")).to_contain_text("Retried: 3 runs; none left.")
    for run in failed:
        settle(worker, run, Status.SUCCEEDED)
    assert Run.objects.get(pk=other.pk).status == Status.FAILED
    entries = AuditEntry.objects.filter(action="retry", reason="quote service back")
    assert sorted(e.run_id for e in entries) == sorted(r.pk for r in failed)
    assert all(e.details["from_position"] == 1 for e in entries)


def test_retry_now_for_a_run_in_backoff(operator_page, worker):
    page = operator_page
    workflows.PAYMENTS.timeouts_left = 1
    run = settle(worker, Run.objects.start("payment", {"cents": 700}), Status.WAITING)
    assert run.wait_kind == WaitKind.RETRY
    # Nothing sweeps in this test: without Retry now the run would wait for ever.

    page.goto("/")
    page.locator(f"#run-{run.pk}").get_by_role("link").first.click()  # 1
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator("#backoff")).to_contain_text("attempt 1 of 4 failed")
    page.get_by_role("button", name="Retry now").click()  # 2
    confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    assert AuditEntry.objects.filter(run=run, action="retry now", actor_name="otto").exists()


def test_the_list_shows_the_backoff_and_retries_now_in_one_click(operator_page, worker):
    page = operator_page
    workflows.PAYMENTS.timeouts_left = 1
    run = settle(worker, Run.objects.start("payment", {"cents": 700}), Status.WAITING)

    page.goto("/")
    row = page.locator(f"#run-{run.pk}")
    expect(row.locator(".retry-cell")).to_contain_text("attempt 1 of 4 failed, next attempt at")
    screenshot(page, "list-retrying-column", full_page=True)
    row.get_by_role("button", name=f"retry run {run.pk} now").click()  # 1
    assert f"Retry the step of run #{run.pk} now" in confirm(page, reason="provider is back")
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    assert AuditEntry.objects.filter(run=run, action="retry now", reason="provider is back").exists()


def test_the_retrying_filter_lists_the_backoff_and_retries_now(operator_page, worker):
    page = operator_page
    workflows.PAYMENTS.timeouts_left = 1
    run = settle(worker, Run.objects.start("payment", {"cents": 700}), Status.WAITING)

    page.goto("/")
    page.get_by_role("link", name="Recover").click()  # 1
    form = page.locator("#recover-filters")
    form.get_by_label("Action").select_option("retry_now")
    form.get_by_label("Status").select_option("retrying")
    form.get_by_role("button", name="Preview").click()  # 2
    row = page.locator(f"#retrying-{run.pk}")
    expect(row).to_contain_text("1 of 4 failed")
    row.get_by_role("button", name="Retry now").click()  # 3
    confirm(page)
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)


def test_acting_under_other_code_warns_in_the_confirmation(operator_page, worker, flaky):
    page = operator_page
    run = settle(worker, Run.objects.start("dashboard_flaky", {"order": "E-1"}), Status.FAILED)
    Run.objects.filter(pk=run.pk).update(code_version="old-build")
    flaky["fail"] = False

    page.goto("/")
    page.locator(f"#run-{run.pk}").get_by_role("link").first.click()  # 1
    page.wait_for_url(f"**/runs/{run.pk}/")
    page.get_by_role("button", name="Resume", exact=True).click()  # 2
    dialog = page.locator("dialog[open]")
    expect(dialog.locator(".code-warning")).to_contain_text("The code changed since this run last ran")
    expect(dialog.locator(".code-warning")).to_contain_text("old-build")
    screenshot(page, "code-version-warning")
    confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    run.refresh_from_db()
    assert run.code_version == run.deployed_version()
    expect(page.locator("#code-history")).to_contain_text("old-build")


def test_a_retry_across_a_received_signal_asks_whether_to_reuse_it(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("approval", {}), Status.WAITING)
    run.send_signal("approve", {"approved": True, "by": "ann"})
    settle(worker, run, Status.SUCCEEDED)

    page.goto(f"/runs/{run.pk}/")
    page.locator("#step-1").get_by_role("button", name="Retry from here").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.get_by_label("Wait for a new signal")).to_be_checked()  # the default
    dialog.get_by_label("Reuse the signal it received").check()
    confirm(page)
    expect(page.locator(".msg.success")).to_contain_text("signals it had received are reused")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    assert Run.objects.get(pk=run.pk).output["by"] == "ann"
    assert run.signals.count() == 2  # the original, consumed, and the copy the retry took


def test_bulk_retry_from_a_step_for_the_ticked_runs_counts_then_confirms(operator_page, worker, flaky):
    page = operator_page
    failed = [
        settle(worker, Run.objects.start("dashboard_flaky", {"order": f"S-{i}"}), Status.FAILED)
        for i in range(2)
    ]
    left_alone = settle(worker, Run.objects.start("pricing", {"name": "y", "price": -1}), Status.FAILED)
    flaky["fail"] = False

    page.goto("/?status=failed")
    for run in [*failed, left_alone]:
        page.locator(f"#run-{run.pk} input.row-check").check()
    step_box = page.get_by_label("step to retry the selected runs from")
    step_box.focus()  # the ticked runs' step names are offered
    expect(page.locator("#bulk-step-names option[value=fetch_quote]")).to_have_count(1)
    step_box.fill("fetch_quote")
    page.get_by_role("button", name="Retry from step…").click()
    dialog = page.locator("dialog[open]")  # the dry-run count, in the confirmation
    expect(dialog.locator("#bulk-retry-count")).to_contain_text("You selected 3 runs; 2 of them have a step")
    assert AuditEntry.objects.filter(action="retry").count() == 0  # the count changes nothing
    assert "Retry 2 runs from step fetch_quote?" in confirm(page, reason="quote service back")
    expect(page.locator(".msg.success")).to_contain_text("Retried from step fetch_quote: 2 runs.")
    for run in failed:
        settle(worker, run, Status.SUCCEEDED)
    assert Run.objects.get(pk=left_alone.pk).status == Status.FAILED
    entries = AuditEntry.objects.filter(action="retry", reason="quote service back")
    assert sorted(e.run_id for e in entries) == sorted(r.pk for r in failed)
