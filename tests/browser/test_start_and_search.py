"""Start a run from the dashboard, search in any script, and a bad filter, in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

import tests.workflows  # noqa: F401  (registers the engine's test workflows)
from runs.models import Run, Status
from runs.workflow import workflow
from tests.browser.test_dashboard import settle
from tests.factories import make_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@workflow("browser_greeting")
def browser_greeting(ctx, data):
    return {"hello": data["name"]}


browser_greeting.input_schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}


def test_the_start_form_refuses_invalid_input_then_starts_the_run(operator_page, worker):
    page = operator_page
    page.goto("/")
    page.get_by_role("link", name="Start a run").click()
    page.wait_for_url("**/start/")
    page.select_option("#id_workflow", "browser_greeting")
    page.fill("#id_input", '{"nom": "Zoë"}')
    page.get_by_role("button", name="Start run").click()
    expect(page.locator(".errorlist")).to_contain_text("'name' is a required property")
    expect(page.locator("#id_input")).to_have_value('{"nom": "Zoë"}')  # kept as typed
    assert not Run.objects.exists()

    page.fill("#id_input", "{oops")
    page.get_by_role("button", name="Start run").click()
    expect(page.locator(".errorlist")).to_contain_text("not valid JSON")

    page.fill("#id_input", '{"name": "Zoë"}')
    page.fill("#id_idempotency_key", "greet-zoe")
    page.get_by_role("button", name="Start run").click()
    run = Run.objects.get()
    page.wait_for_url(f"**/runs/{run.pk}/")
    expect(page.locator(".msg.success")).to_contain_text(f"Run {run.pk} (browser_greeting) started.")
    settle(worker, run, Status.SUCCEEDED)
    assert run.output == {"hello": "Zoë"} and run.dedupe_key == "greet-zoe"
    expect(page.locator("#run-status")).to_have_text("succeeded")


@pytest.mark.parametrize("term", ["李雷", "🚀", "“smart quotes”", "ünïcode"])
def test_a_search_finds_text_in_any_script(operator_page, term):
    page = operator_page
    wanted = make_run(input={"customer": "李雷", "note": "launch 🚀 with “smart quotes”", "w": "Ünïcode"})
    other = make_run(input={"customer": "Han Meimei"})
    page.goto("/")
    page.fill("input[name=q]", term)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f"#run-{wanted.pk}")).to_be_visible()
    expect(page.locator(f"#run-{other.pk}")).to_have_count(0)
    expect(page.locator(".search-window")).not_to_contain_text("#0")


def test_a_bad_filter_shows_an_error_and_an_unfiltered_list(operator_page):
    page = operator_page
    failed = make_run(Status.FAILED)
    done = make_run(Status.SUCCEEDED)
    page.goto("/?status=bogus&started_after=notadate")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Not every filter was applied")
    expect(alert).to_contain_text("“bogus”")
    expect(alert).to_contain_text("“notadate”")
    expect(page.locator(f"#run-{failed.pk}")).to_be_visible()
    expect(page.locator(f"#run-{done.pk}")).to_be_visible()
