"""Terminate a hung step from the dashboard, against a real Celery worker."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from runs.models import Run, Status
from tests.browser.test_dashboard import confirm
from tests.processes import Cluster, wait_for
from tests.test_acceptance import step_counts
from tests.workflows import create_ledger

pytestmark = [pytest.mark.browser, pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def prefork_cluster(tmp_path):
    create_ledger()
    cluster = Cluster(tmp_path, DURABLE_LEASE_TIMEOUT="1", DURABLE_HEARTBEAT_INTERVAL="0.25")
    cluster.worker("prefork", pool="prefork", concurrency=1)
    cluster.beat()
    yield cluster
    cluster.stop()


def test_terminate_a_hung_step_from_the_run_page_then_resume(operator_page, prefork_cluster):
    page = operator_page
    run = Run.objects.start(
        "ledger", {"steps": 3, "slow_index": 1, "pause": 3600}, queue=prefork_cluster.queue
    )
    wait_for(lambda: "step-1" in step_counts(run.pk), 60, "step 1 to hang", prefork_cluster)

    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("running")
    page.get_by_role("button", name="Terminate").click()
    assert f"Terminate run #{run.pk}" in confirm(page)
    # The worker's supervisor kills the pool process inside the hung step; the page follows.
    expect(page.locator("#run-status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#run-live")).to_contain_text("Terminated")
    assert Run.objects.get(pk=run.pk).status == Status.FAILED

    page.get_by_role("button", name="Resume").click()
    confirm(page)
    # The pool replaces the killed process before the run is claimed again.
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=60_000)
    assert step_counts(run.pk) == {"step-0": 1, "step-1": 2, "step-2": 1}
