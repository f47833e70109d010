"""Real celery worker and beat processes against the test database and a real broker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

from harness import cluster as harness_cluster
from harness.cluster import broker_holds_messages, wipe_broker

__all__ = ["Cluster", "broker_holds_messages", "child_pids", "test_database_url", "wait_for", "wipe_broker"]


def test_database_url() -> str:
    """A DATABASE_URL naming the database this test session is using."""
    return harness_cluster.database_url(connection.settings_dict, connection.vendor)


class Cluster(harness_cluster.Cluster):
    """Workers and beat on the test database, running the test workflows."""

    def __init__(self, tmp_path: Path, **overrides: str):
        overrides = {"DURABLE_WORKFLOW_MODULES": "tests.workflows", "DURABLE_LOG_LEVEL": "INFO", **overrides}
        workflows = overrides.pop("DURABLE_WORKFLOW_MODULES")
        super().__init__(tmp_path, test_database_url(), workflows, **overrides)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, cluster: Cluster | None = None
) -> float:
    """Poll until condition() holds; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    details = cluster.logs() if cluster else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{details}")


def child_pids(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]
