"""In the browser: times in the viewer's own zone (UTC on hover), and a long run's page
with its outputs folded, collapse-all/expand-all and jump-to-step."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from runs.models import Status
from runs.templatetags.dashboard import day_label
from tests.browser.conftest import log_in, watch_csp
from tests.factories import make_run, make_viewer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture
def tokyo_page(browser, live_server):
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=live_server.url, timezone_id="Asia/Tokyo"
    )
    context.set_default_timeout(15_000)
    tab = context.new_page()
    violations = watch_csp(tab)
    yield tab
    context.close()
    assert not violations, violations


def test_a_browser_in_tokyo_sees_tokyo_time_with_utc_on_hover(tokyo_page):
    from django.utils import timezone

    run = make_run(Status.SUCCEEDED, 2)
    make_viewer("vera")
    log_in(tokyo_page, "vera")
    tokyo_page.goto(f"/runs/{run.pk}/")
    with timezone.override(TOKYO):
        expected = day_label(run.created_at, seconds=True)
    created = tokyo_page.locator("dl.facts time").first
    # The first page a browser sees may be drawn in UTC; its zone's cookie reloads it once.
    tokyo_page.wait_for_function(
        "expected => document.querySelector('dl.facts time').textContent === expected", arg=expected
    )
    assert (
        created.get_attribute("title")
        == f"{run.created_at.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M:%S} UTC"
    )
    assert {cookie["name"]: cookie["value"] for cookie in tokyo_page.context.cookies()}["tz"] == "Asia/Tokyo"
