"""Liveness of the worker process: one heartbeat row per process, not per run or step.

The first claim in a process writes its row and starts a daemon thread that
refreshes it every DURABLE_HEARTBEAT_INTERVAL. When the process dies, the row
goes stale and the sweep takes back the runs it held.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from django.conf import settings
from django.db import connection

from runs.models import WorkerProcess

log = logging.getLogger(__name__)

_lock = threading.Lock()
_current: dict = {"pid": None, "name": None}


def process_name() -> str:
    """This process's identity, registered (with a first heartbeat) on first use."""
    with _lock:
        if _current["pid"] != os.getpid():  # first use, or a forked child
            hostname, pid = socket.gethostname(), os.getpid()
            name = f"{hostname}:{pid}:{uuid.uuid4().hex[:6]}"
            WorkerProcess.beat(name, hostname, pid)
            _current.update(pid=pid, name=name)
            if settings.DURABLE_HEARTBEAT_THREAD:
                threading.Thread(
                    target=_beat_forever, args=(name, hostname, pid), daemon=True, name="durable-heartbeat"
                ).start()
        return _current["name"]


def _beat_forever(name: str, hostname: str, pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(settings.DURABLE_HEARTBEAT_INTERVAL):
        try:
            WorkerProcess.beat(name, hostname, pid)
        except Exception:
            # Database restarting or unreachable: drop the connection and try again.
            log.warning("heartbeat for %s failed", name, exc_info=True)
            connection.close()
