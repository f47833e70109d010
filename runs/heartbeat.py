"""Liveness of the worker process: one heartbeat row per process, not per run or step.

The first claim in a process writes its row and starts a daemon thread that
refreshes it every DURABLE_HEARTBEAT_INTERVAL. When the process dies, the row
goes stale and the sweep takes back the runs it held.

The thread also gives back runs leased to this process that it is no longer
executing: an engine error (say, the database restarting mid-commit) can end a
task without releasing its run, and a live heartbeat would otherwise keep such
a run leased for ever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from runs.models import Run, Status, WorkerProcess
from steps.models import Branch, BranchStatus

log = logging.getLogger(__name__)

_lock = threading.Lock()
_current: dict = {"pid": None, "name": None}
_executing: set[str] = set()  # lease tokens of the runs this process is executing now


def process_name() -> str:
    """This process's identity, registered (with a first heartbeat) on first use."""
    with _lock:
        if _current["pid"] != os.getpid():  # first use, or a forked child
            hostname, pid = socket.gethostname(), os.getpid()
            name = f"{hostname}:{pid}:{uuid.uuid4().hex[:6]}"
            WorkerProcess.beat(name, hostname, pid)
            _current.update(pid=pid, name=name)
            _executing.clear()
            if settings.DURABLE_HEARTBEAT_THREAD:
                threading.Thread(
                    target=_beat_forever, args=(name, hostname, pid), daemon=True, name="durable-heartbeat"
                ).start()
        return _current["name"]


@contextmanager
def executing(token: str):
    """Mark a lease token as in use by this process for the duration of the block."""
    with _lock:
        _executing.add(token)
    try:
        yield
    finally:
        with _lock:
            _executing.discard(token)


def release_abandoned(name: str) -> int:
    """Recover runs leased to this process whose execution has ended without releasing them."""
    with _lock:
        active = set(_executing)
    released = 0
    held = Run.objects.filter(status=Status.RUNNING, lease_owner=name).only(
        "pk", "lease_token", "queue", "workflow"
    )
    for run in held:
        if run.lease_token not in active and run.recover("its worker stopped executing it") is not None:
            released += 1
    from runs.recovery import recover_lost_process_branch

    for branch in Branch.objects.filter(status=BranchStatus.RUNNING, lease_owner=name).only(
        "pk", "lease_token"
    ):
        if branch.lease_token not in active and recover_lost_process_branch(branch.pk, branch.lease_token):
            released += 1
    return released


def _beat_forever(name: str, hostname: str, pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(settings.DURABLE_HEARTBEAT_INTERVAL):
        try:
            WorkerProcess.beat(name, hostname, pid)
            release_abandoned(name)
        except Exception:
            # Database restarting or unreachable: drop the connection and try again.
            log.warning("heartbeat for %s failed", name, exc_info=True)
            connection.close()
