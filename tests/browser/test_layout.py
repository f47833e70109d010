"""Nothing is cut at the widths operators use: 1024 px and 1440 px, dashboard and admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import Run, Status
from tests.browser.conftest import log_in, screenshot
from tests.factories import PASSWORD, make_failed_run, make_run, make_waiting_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = "x" * 90  # a long unbroken name or message, the kind that pushes columns out


def overflow(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")


@pytest.fixture
def busy_dashboard():
    runs = [make_failed_run(workflow=f"workflow_{LONG}") for _ in range(2)]
    waiting = make_waiting_run("approval")
    long_run = make_run(Status.SUCCEEDED, 15)
    Run.objects.filter(pk=runs[0].pk).update(current_step=f"step_{LONG}", error_message=f"boom {LONG} " * 3)
    return {"failed": runs[0], "waiting": waiting, "long": long_run}


@pytest.mark.parametrize("width", [1024, 1440])
def test_no_page_overflows_sideways(browser, live_server, busy_dashboard, width):
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    log_in(page, "root")
    pages = {
        "list": "/",
        "overview": "/overview/",
        "run": f"/runs/{busy_dashboard['failed'].pk}/",
        "long-run": f"/runs/{busy_dashboard['long'].pk}/",
        "inbox": "/inbox/",
        "workers": "/workers/",
        "start": "/start/",
        "admin-runs": "/admin/runs/run/",
        "admin-checkpoints": "/admin/steps/checkpoint/",
        "admin-run": f"/admin/runs/run/{busy_dashboard['failed'].pk}/change/",
    }
    cut = {}
    for name, url in pages.items():
        page.goto(url)
        if name == "list":
            page.wait_for_selector("#overview .stats")
        screenshot(page, f"layout-{name}-{width}", full_page=True)
        scroll, client = overflow(page)
        if scroll > client:
            cut[name] = (scroll, client)
    context.close()
    assert not cut, cut
