"""Real celery worker and beat processes against the test database and a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).parent / "celery")


def test_database_url() -> str:
    """A DATABASE_URL naming the database this test session is using."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{auth}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


class Cluster:
    """Worker and beat processes sharing one private queue, so tests do not see each other."""

    def __init__(self, tmp_path: Path, **overrides: str):
        self.tmp_path = tmp_path
        self.queue = f"test-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": test_database_url(),
            "DURABLE_QUEUE": self.queue,
            "DURABLE_WORKFLOW_MODULES": "tests.workflows",
            "DURABLE_VAR_DIR": str(tmp_path),
            "DURABLE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            # Share the broker folder with this test process, which rings the doorbells.
            self.env["DURABLE_BROKER_DIR"] = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [CELERY, "-A", "config", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so SIGKILL takes pool children too
        )
        process.log_path = self.tmp_path / f"{name}.log"
        self.processes.append(process)
        return process

    def worker(self, name: str, pool: str = "solo", concurrency: int = 1) -> subprocess.Popen:
        return self._spawn(
            name,
            [
                "worker",
                "-Q",
                self.queue,
                "-n",
                f"{name}-{self.queue}@%h",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                "info",
            ],
        )

    def beat(self) -> subprocess.Popen:
        return self._spawn("beat", ["beat", "-l", "info", "-s", str(self.tmp_path / "beat-schedule")])

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL the whole process group: the machine lost power."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-4000:]}" for p in self.processes
        )


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


def wipe_broker(queue: str) -> None:
    """Lose every queued message, as a Redis restart without persistence would.

    On the filesystem broker only the given queue's messages go, so test sessions
    running side by side on one machine do not disturb each other.
    """
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).flushall()
    elif url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        for message in folder.glob(f"*.{queue}.msg"):
            message.unlink(missing_ok=True)
    else:
        raise NotImplementedError(f"cannot wipe broker {url}")


def child_pids(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def broker_holds_messages(queue: str) -> bool:
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis"):
        import redis

        return redis.Redis.from_url(url).llen(queue) > 0
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    return any(folder.glob(f"*.{queue}.msg"))
