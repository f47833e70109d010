"""Browser tests: Debian's Chromium driven by Playwright against pytest-django's live server.

The engine runs for real: each doorbell executes its run in a background thread,
as a worker would, and the test waits for every such thread before it ends.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from runs import dispatch
from runs.engine import execute_run
from tests.factories import PASSWORD, make_operator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the
    # tests make between browser steps are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Worker:
    """Answers doorbells by executing runs in background threads, like a Celery worker."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def ring(self, run_id: int, queue: str) -> None:
        thread = threading.Thread(target=self._execute, args=(run_id,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _execute(self, run_id: int) -> None:
        try:
            execute_run(run_id)
        except BaseException as exc:  # surfaced by the fixture, not lost in a thread
            self.errors.append(exc)
        finally:
            connection.close()

    def join(self, timeout: float = 30) -> None:
        for thread in list(self.threads):
            thread.join(timeout)


@pytest.fixture
def worker(monkeypatch) -> Iterator[Worker]:
    running = Worker()
    monkeypatch.setattr(dispatch, "ring", running.ring)
    yield running
    running.join()
    assert not running.errors, running.errors


# Reports every Content-Security-Policy violation on the console, where Chromium also
# writes its own "Refused to ..." messages. Added through the DevTools protocol, so the
# policy it watches does not apply to it.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


def watch_csp(tab) -> list[str]:
    """Console messages of `tab` that report a Content-Security-Policy violation."""
    violations: list[str] = []
    tab.add_init_script(REPORT_CSP_VIOLATIONS)

    def check(message):
        text = message.text
        if "Refused to" in text or "Content Security Policy" in text or "CSP violation" in text:
            violations.append(f"{tab.url}: {text}")

    tab.on("console", check)
    return violations


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    violations = watch_csp(tab)
    tab.csp_violations = violations
    yield tab
    context.close()
    # Every browser test doubles as a check that the pages it saw keep to the policy.
    assert not violations, violations


def log_in(page, username: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


@pytest.fixture
def operator_page(page):
    make_operator("otto")
    log_in(page, "otto")
    return page


def screenshot(page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
