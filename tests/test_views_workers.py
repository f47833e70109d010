"""The workers page: live workers with what they hold, queues with their backlog."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from runs.models import Run, Status, WorkerProcess
from tests.factories import make_run, make_user, make_viewer

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


def worker(name: str, queues: list[str], beat_ago: float = 1.0) -> WorkerProcess:
    return WorkerProcess.objects.create(
        name=name,
        hostname="box-1",
        pid=int(name.rsplit(":", 1)[-1].split("/")[-1]) if name[-1].isdigit() else 1,
        queues=queues,
        heartbeat_at=timezone.now() - timedelta(seconds=beat_ago),
    )


def test_it_shows_live_workers_their_pool_and_the_runs_they_hold(viewer_client, settings):
    settings.DURABLE_LEASE_TIMEOUT = 30
    worker("box-1:100", ["durable"])
    worker("box-1:100/101", [])
    worker("box-1:100/102", [])
    held = make_run(Status.RUNNING, 1, lease_owner="box-1:100/101")
    Run.objects.filter(pk=held.pk).update(current_step="charge_card")
    response = viewer_client.get(reverse("workers"))
    (row,) = response.context["workers"]
    assert (row.name, row.hostname, row.pid, row.queues, row.alive) == (
        "box-1:100",
        "box-1",
        100,
        ["durable"],
        True,
    )
    assert row.processes == 2
    assert [run["pk"] for run in row.runs] == [held.pk]
    html = response.content.decode()
    assert f'href="/runs/{held.pk}/"' in html and "charge_card" in html


def test_a_silent_worker_is_flagged_and_serves_no_queue(viewer_client, settings):
    settings.DURABLE_LEASE_TIMEOUT = 30
    worker("box-1:200", ["durable"], beat_ago=120)
    make_run(Status.PENDING, 0, queue="durable")
    response = viewer_client.get(reverse("workers"))
    (row,) = response.context["workers"]
    assert not row.alive
    queue = next(q for q in response.context["queues"] if q.name == "durable")
    assert queue.pending == 1 and queue.unserved
    assert "no live worker consumes this queue" in response.content.decode()


def test_queues_count_pending_and_held_runs_and_who_consumes_them(viewer_client, settings):
    settings.DURABLE_QUEUES = ["durable", "bulk"]
    worker("box-1:300", ["durable"])
    for _ in range(3):
        make_run(Status.PENDING, 0, queue="durable")
    make_run(Status.QUEUED, 0, queue="durable")
    make_run(Status.PENDING, 0, queue="bulk")
    make_run(Status.SUCCEEDED, 1, queue="bulk")
    queues = {q.name: q for q in viewer_client.get(reverse("workers")).context["queues"]}
    assert (queues["durable"].pending, queues["durable"].queued, queues["durable"].consumers) == (
        3,
        1,
        ["box-1:300"],
    )
    assert queues["durable"].unserved is False
    assert (queues["bulk"].pending, queues["bulk"].unserved) == (1, True)
    assert list(queues) == ["bulk", "durable"]  # the unserved queue first


def test_the_broker_depth_is_shown_when_the_broker_can_tell(viewer_client):
    queues = viewer_client.get(reverse("workers")).context["queues"]
    assert all(q.broker_depth is None or q.broker_depth >= 0 for q in queues)


def test_a_broker_that_cannot_answer_leaves_the_depths_blank(viewer_client, monkeypatch):
    from config.celery import app

    def refuse(*args, **kwargs):
        raise OSError("broker down")

    monkeypatch.setattr(app, "connection_for_read", refuse)
    response = viewer_client.get(reverse("workers"))
    assert response.status_code == 200
    assert all(q.broker_depth is None for q in response.context["queues"])


def test_it_needs_the_view_permission(client):
    client.force_login(make_user("stranger"))
    assert client.get(reverse("workers")).status_code == 403
    assert client.post(reverse("workers")).status_code == 405
