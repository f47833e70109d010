"""In the browser: times in the viewer's own zone (UTC on hover), and a long run's page
with its outputs folded, collapse-all/expand-all and jump-to-step."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from runs.models import Status
from runs.templatetags.dashboard import day_label
from tests.browser.conftest import log_in, screenshot, watch_csp
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


# Multi-line when pretty-printed: a step's output worth folding.
MEDIUM = {"rows": list(range(30)), "note": "a medium output"}


def test_a_15_step_run_folds_its_outputs_and_jumps_to_a_step(browser, live_server):
    run = make_run(Status.SUCCEEDED, 15, output=MEDIUM)
    run.output = {"answer": "the final answer " * 60}
    run.save(update_fields=["output"])
    make_viewer("vera")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    violations = watch_csp(tab)
    log_in(tab, "vera")
    tab.goto(f"/runs/{run.pk}/")

    def output_shown(position: int) -> bool:
        return tab.locator(f"#step-{position} pre.json").first.is_visible()

    final = tab.locator(".io details.json")
    assert [output_shown(position) for position in range(15)] == [True] * 3 + [False] * 11 + [True]
    assert final.get_attribute("open") is not None
    folded_height = tab.evaluate("document.documentElement.scrollHeight")
    screenshot(tab, "long-run-folded", full_page=True)

    tab.get_by_role("button", name="Expand all outputs").click()
    assert all(output_shown(position) for position in range(15))
    assert tab.evaluate("document.documentElement.scrollHeight") > folded_height

    tab.get_by_role("button", name="Collapse all").click()
    assert not any(output_shown(position) for position in range(3, 14))
    assert final.get_attribute("open") is not None  # the final output stays open
    assert output_shown(14)  # the last step's output too

    tab.locator("nav.jump").get_by_role("link", name="9", exact=True).click()
    tab.wait_for_url(f"**/runs/{run.pk}/#step-9")
    # Jumping to a step unfolds it and brings it into view (on hashchange, just after the URL).
    expect(tab.locator("#step-9 pre.json").first).to_be_visible()
    tab.wait_for_function(
        "() => { const top = document.getElementById('step-9').getBoundingClientRect().top;"
        " return top >= 0 && top < 900; }"
    )
    context.close()
    assert not violations, violations
