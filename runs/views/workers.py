"""The workers page: who executes runs, what each holds, and which queues nobody serves.

Everything comes from the database (the source of truth): worker heartbeats, the runs
each process holds, the runs pending per queue. The broker is asked only for its queue
depths, and only when it can tell; a broker that cannot answer leaves those blank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from runs.models import Run, Status, WorkerProcess
from runs.views.common import AuthenticatedHttpRequest, check_viewer, login_required

log = logging.getLogger(__name__)

# Running runs listed per page; more than this many in flight is said, not listed.
IN_FLIGHT_SHOWN = 500
# Workers whose last heartbeat is older than this are not shown (the sweep deletes
# them after a day).
GONE_AFTER = timedelta(hours=1)
# Seconds the broker gets to answer for its queue depths.
BROKER_TIMEOUT = 2.0


@dataclass
class WorkerRow:
    """A worker's main process, its pool processes, and the runs they hold."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    processes: int = 0  # pool processes with a live heartbeat
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class QueueRow:
    name: str
    pending: int = 0
    queued: int = 0  # held back by a workflow's concurrency limit
    oldest: datetime | None = None
    consumers: list[str] = field(default_factory=list)
    broker_depth: int | None = None

    @property
    def unserved(self) -> bool:
        return bool(self.pending) and not self.consumers


def worker_rows(now: datetime) -> tuple[list[WorkerRow], int]:
    """Main processes (the ones that name their queues) with what their pool holds."""
    lapse = timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
    processes = list(WorkerProcess.objects.filter(heartbeat_at__gte=now - GONE_AFTER).order_by("name"))
    mains = {p.name: p for p in processes if "/" not in p.name}
    rows = {
        name: WorkerRow(
            name=name,
            hostname=p.hostname,
            pid=p.pid,
            queues=list(p.queues or []),
            started_at=p.started_at,
            heartbeat_at=p.heartbeat_at,
            alive=now - p.heartbeat_at <= lapse,
        )
        for name, p in mains.items()
    }
    for p in processes:
        main = rows.get(p.name.split("/", 1)[0])
        if main is not None and p.name != main.name and now - p.heartbeat_at <= lapse:
            main.processes += 1
    running = Run.objects.filter(status=Status.RUNNING).order_by("pk")
    in_flight = list(running.values("pk", "workflow", "current_step", "lease_owner")[: IN_FLIGHT_SHOWN + 1])
    for run in in_flight[:IN_FLIGHT_SHOWN]:
        main = rows.get(run["lease_owner"].split("/", 1)[0])
        if main is not None:
            main.runs.append(run)
    ordered = sorted(rows.values(), key=lambda row: (not row.alive, row.name))
    return ordered, len(in_flight)


def queue_rows(workers: list[WorkerRow]) -> list[QueueRow]:
    """Every configured queue and every queue with runs waiting, with who consumes it."""
    queues = {name: QueueRow(name) for name in settings.DURABLE_QUEUES}
    waiting = (
        Run.objects.filter(status__in=[Status.PENDING, Status.QUEUED])
        .order_by()
        .values("queue", "status")
        .annotate(n=Count("pk"), oldest=Min("created_at"))
    )
    for row in waiting:
        queue = queues.setdefault(row["queue"], QueueRow(row["queue"]))
        if row["status"] == Status.PENDING:
            queue.pending = row["n"]
            queue.oldest = row["oldest"]
        else:
            queue.queued = row["n"]
    for worker in workers:
        for name in worker.queues if worker.alive else []:
            queues.setdefault(name, QueueRow(name)).consumers.append(worker.name)
    return sorted(queues.values(), key=lambda queue: (not queue.unserved, queue.name))


def broker_depths(names: list[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, as the broker counts them; None where it cannot tell."""
    # The project's Celery app, whichever project installed the dashboard.
    from celery import current_app as app

    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with app.connection_for_read(connect_timeout=BROKER_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
            channel = connection.default_channel
            for name in names:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:  # a queue the broker never saw, or one it will not count
                    depths[name] = None
                    channel = connection.channel()  # a refused passive declare may close the channel
    except Exception:
        log.warning("the broker did not answer for its queue depths", exc_info=True)
    return depths


@require_GET
@login_required
def workers(request: AuthenticatedHttpRequest) -> HttpResponse:
    check_viewer(request.user)
    now = timezone.now()
    rows, in_flight = worker_rows(now)
    queues = queue_rows(rows)
    for queue, depth in broker_depths([queue.name for queue in queues]).items():
        next(row for row in queues if row.name == queue).broker_depth = depth
    context = {
        "workers": rows,
        "queues": queues,
        "in_flight": in_flight,
        "in_flight_shown": IN_FLIGHT_SHOWN,
        "lease_timeout": settings.DURABLE_LEASE_TIMEOUT,
        "now": now,
    }
    if request.htmx and request.htmx.target == "workers-live" and not request.htmx.history_restore_request:
        return render(request, "runs/workers.html#workers-live", context)
    return render(request, "runs/workers.html", context)
