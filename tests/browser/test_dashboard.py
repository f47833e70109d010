"""The dashboard in a real browser: find a failure, resume it, retry, approve, and no XSS."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import Run, Status
from tests import factories
from tests.browser.conftest import screenshot
from tests.factories import make_failed_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'


def settle(worker, run: Run, *statuses: str, timeout: float = 15) -> Run:
    """Wait until the worker threads have taken the run to one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run.pk} is {run.status}, expected {statuses}")


def confirm(page, reason: str = "") -> str:
    """Answer the open confirmation <dialog>: give the reason, press Yes. Returns its question."""
    dialog = page.locator("dialog[open]")
    expect(dialog).to_be_visible()
    question = dialog.locator("h2").text_content()
    if reason:
        dialog.get_by_label("Reason").fill(reason)
    dialog.get_by_role("button", name=re.compile("^Yes")).click()
    return question


@pytest.fixture
def flaky():
    factories.FLAKY["fail"] = True
    yield factories.FLAKY
    factories.FLAKY["fail"] = True


def test_find_a_failed_run_resume_it_and_watch_it_succeed(operator_page, worker, flaky):
    page = operator_page
    run = settle(worker, Run.objects.start("dashboard_flaky", {"order": "A-1"}), Status.FAILED)

    page.goto("/")
    row = page.locator(f"#run-{run.pk}")
    expect(row).to_contain_text("failed")
    expect(row).to_contain_text("NonRetryableError")
    expect(row).to_contain_text("quote service answered 503")
    expect(page.locator("#overview .stats")).to_contain_text("started, 24 h")  # loaded after the list
    screenshot(page, "run-list")

    row.get_by_role("link").click()
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("failed")
    page.evaluate("window.__sameDocument = true")

    flaky["fail"] = False
    page.get_by_role("button", name="Resume").click()
    assert f"Resume run #{run.pk}" in confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    assert page.evaluate("window.__sameDocument") is True  # updated in place, never reloaded
    expect(page.locator(".msg.success")).to_contain_text(f"Run {run.pk} resumed.")
    expect(page.locator("#step-1 .superseded-cp")).to_contain_text("superseded")
    expect(page.locator("table.audit")).to_contain_text("resume")
    screenshot(page, "run-detail", full_page=True)


def test_retry_from_a_middle_step_shows_the_superseded_checkpoints(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("counter", {"steps": 4}), Status.SUCCEEDED)

    page.goto(f"/runs/{run.pk}/")
    page.locator("#step-2").get_by_role("button", name="Retry from here").click()
    confirm(page, reason="re-run from the middle")
    expect(page.locator(".msg.success")).to_contain_text("retrying from step 2")
    settle(worker, run, Status.SUCCEEDED)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    for position in (2, 3):
        expect(page.locator(f"#step-{position} .superseded-cp")).to_have_count(1)
    expect(page.locator("#step-1 .superseded-cp")).to_have_count(0)
    expect(page.locator("table.audit")).to_contain_text("re-run from the middle")
    expect(page.locator("svg.timeline rect.superseded")).to_have_count(2)


def test_approve_a_waiting_run(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("approval", {}), Status.WAITING)

    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_role("button", name="Approve").click()
    confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    run.refresh_from_db()
    assert run.output == {"plan": 42, "outcome": "done", "by": "otto"}


def test_a_signal_with_invalid_json_is_refused_in_place(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("approval", {}), Status.WAITING)

    page.goto(f"/runs/{run.pk}/")
    page.locator("#signal-form summary").click()
    page.fill("#id_payload", "{approved: yes")
    page.get_by_role("button", name="Send signal…").click()
    confirm(page)
    expect(page.locator("#signal-form .errorlist")).to_contain_text("This is not valid JSON")
    assert not run.signals.exists()

    page.fill("#id_payload", '{"approved": true, "by": "ops"}')
    page.get_by_role("button", name="Send signal…").click()
    confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded")


def test_edit_a_failed_steps_output_then_resume(operator_page, worker, flaky):
    page = operator_page
    run = settle(worker, Run.objects.start("dashboard_flaky", {"order": "B-2"}), Status.FAILED)

    page.goto(f"/runs/{run.pk}/")
    page.locator("#step-1").get_by_role("link", name="Edit output…").click()
    editor = page.locator("#step-1 textarea")
    expect(editor).to_be_visible()
    editor.fill('{"order": "B-2", "cents": 777}')
    page.locator("#step-1").get_by_role("button", name="Save and resume…").click()
    confirm(page)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    run.refresh_from_db()
    assert run.output == {"booked": 777}


def test_the_list_updates_active_rows_live(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("approval", {}), Status.WAITING)
    done = make_failed_run()

    page.goto("/")
    row = page.locator(f"#run-{run.pk}")
    expect(row).to_contain_text("waiting")
    page.locator(f"#run-{done.pk} input.row-check").check()
    page.evaluate("window.__sameDocument = true")

    run.send_signal("approve", {"approved": True})
    settle(worker, run, Status.SUCCEEDED)
    expect(row).to_contain_text("succeeded", timeout=15_000)  # the list polls every 5 s
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator(f"#run-{done.pk} input.row-check")).to_be_checked()


def test_bulk_resume_counts_and_confirms(operator_page, worker, flaky):
    page = operator_page
    runs = [
        settle(worker, Run.objects.start("dashboard_flaky", {"order": f"C-{i}"}), Status.FAILED)
        for i in range(2)
    ]
    flaky["fail"] = False

    page.goto("/?status=failed")
    page.locator("[data-select-all]").check()
    page.get_by_role("button", name="Resume…").click()
    expect(page.locator("dialog[open]")).to_contain_text("You selected 2 runs.")
    assert "Resume 2 runs?" in confirm(page)
    expect(page.locator(".msg.success")).to_contain_text("Resume: 2 runs.")
    for run in runs:
        settle(worker, run, Status.SUCCEEDED)


def test_untrusted_output_never_executes(operator_page, worker):
    page = operator_page
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    echoed = settle(worker, Run.objects.start("dashboard_echo", {"payload": XSS}), Status.SUCCEEDED)
    failed = make_failed_run(input={"prompt": XSS}, output={"html": XSS})
    Run.objects.filter(pk=failed.pk).update(error_type=XSS, error_message=XSS, current_step=XSS)

    for path in ("/", f"/?q={failed.pk}", f"/runs/{echoed.pk}/", f"/runs/{failed.pk}/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss") is None, path
    page.goto(f"/runs/{failed.pk}/")
    expect(page.locator(".error-box")).to_contain_text('<img src=x onerror="window.__xss=1">')
    checkpoint = echoed.checkpoints.first()
    page.goto(f"/runs/{echoed.pk}/checkpoints/{checkpoint.pk}/")
    expect(page.locator("pre.json")).to_contain_text("<script>window.__xss=1</script>")
    assert page.evaluate("window.__xss") is None
    assert dialogs == []


def test_viewers_see_no_buttons(page, worker):
    from tests.browser.conftest import log_in
    from tests.factories import make_viewer

    make_viewer("vera")
    run = make_failed_run()
    log_in(page, "vera")
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("failed")
    expect(page.locator("form.action")).to_have_count(0)
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)


def test_screenshots_at_phone_width(browser, live_server, worker):
    factories.make_operator("pat")
    run = make_failed_run(steps=4, attempts_per_step=1)
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=live_server.url)
    phone = context.new_page()
    from tests.browser.conftest import log_in

    log_in(phone, "pat")
    expect(phone.locator(f"#run-{run.pk}")).to_be_visible()
    expect(phone.locator("#overview .stats")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(phone, "run-list-phone")
    phone.goto(f"/runs/{run.pk}/")
    expect(phone.locator("#run-status")).to_have_text("failed")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(phone, "run-detail-phone", full_page=True)
    context.close()


def test_the_main_pages_keep_to_the_content_security_policy(operator_page, worker):
    page = operator_page
    run = settle(worker, Run.objects.start("counter", {"steps": 3}), Status.SUCCEEDED)
    failed = make_failed_run(steps=3, attempts_per_step=1)
    checkpoint = run.checkpoints.first()

    response = page.goto("/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    expect(page.locator(f"#run-{run.pk} .bar svg rect")).to_have_attribute("width", "100")
    screenshot(page, "run-list-progress")
    page.wait_for_load_state("networkidle")  # the overview, loaded by htmx
    expect(page.locator("#overview .stats")).to_be_visible()
    # htmx's request indicator styles come from app.css, not an injected <style>.
    assert page.evaluate("document.querySelectorAll('style').length") == 0
    for path in (
        f"/runs/{run.pk}/",
        f"/runs/{failed.pk}/",
        f"/runs/{run.pk}/checkpoints/{checkpoint.pk}/",
        f"/runs/{run.pk}/value/input/",
        "/admin/",
    ):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    page.context.clear_cookies()
    page.goto("/accounts/login/")
    assert page.csp_violations == []
