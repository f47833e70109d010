"""The workers page against a real Celery worker: it shows the worker and the run it
executes, and flags a queue that has pending runs and nobody consuming it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from runs.models import Run, WorkerProcess
from tests.processes import Cluster, wait_for
from tests.test_acceptance import step_counts
from tests.workflows import create_ledger

pytestmark = [pytest.mark.browser, pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

UNSERVED = "nobody-home"


def wait_for_supervisor(cluster) -> WorkerProcess:
    """The worker's main process, once its supervisor has beaten with the queues it consumes."""

    def beaten() -> WorkerProcess | None:
        return next((w for w in WorkerProcess.objects.all() if cluster.queue in (w.queues or [])), None)

    wait_for(lambda: beaten() is not None, 60, "the worker's supervisor to beat", cluster)
    return beaten()


@pytest.fixture
def prefork_cluster(tmp_path, settings):
    create_ledger()
    cluster = Cluster(tmp_path, DURABLE_HEARTBEAT_INTERVAL="0.5")
    cluster.worker("prefork", pool="prefork", concurrency=2)
    # A queue runs may be started on, which no worker of this test consumes.
    settings.DURABLE_QUEUES = [*settings.DURABLE_QUEUES, UNSERVED]
    yield cluster
    cluster.stop()


def test_the_workers_page_shows_a_started_worker_and_flags_a_queue_without_one(
    operator_page, prefork_cluster
):
    page = operator_page
    cluster = prefork_cluster
    busy = Run.objects.start("ledger", {"steps": 2, "slow_index": 0, "pause": 3600}, queue=cluster.queue)
    wait_for(lambda: "step-0" in step_counts(busy.pk), 60, "the run to be in its slow step", cluster)
    stranded = Run.objects.start("ledger", {"steps": 1}, queue=UNSERVED)
    supervisor = wait_for_supervisor(cluster)

    page.goto("/")
    page.get_by_role("link", name="Workers").click()
    page.wait_for_url("**/workers/")
    row = page.locator(f"#worker-{supervisor.pid}")
    expect(row).to_contain_text(supervisor.hostname)
    expect(row).to_contain_text(cluster.queue)
    expect(row.get_by_role("link", name=f"#{busy.pk} ledger")).to_be_visible()
    expect(row).not_to_contain_text("silent")

    unserved = page.locator(f"#queue-{UNSERVED}")
    expect(unserved).to_contain_text("no live worker consumes this queue")
    expect(unserved).to_contain_text("nobody")
    served = page.locator(f"#queue-{cluster.queue}")
    expect(served).to_contain_text(supervisor.name)
    expect(served).not_to_contain_text("no live worker")
    assert Run.objects.get(pk=stranded.pk).status == "pending"
