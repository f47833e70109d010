"""Real celery worker and beat processes, started, killed and replaced on demand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).parent / "celery")


class Cluster:
    """Workers and beat sharing one private queue, so they never mix with other traffic."""

    def __init__(self, log_dir: Path, database_url: str, workflows: str, **overrides: str):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        # This process starts runs on the cluster's private queue, which its workers consume.
        settings.DURABLE_QUEUES = [*settings.DURABLE_QUEUES, self.queue]
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url,
            "DURABLE_QUEUE": self.queue,
            "DURABLE_WORKFLOW_MODULES": workflows,
            "DURABLE_VAR_DIR": str(self.log_dir),
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            # Share the broker folder with this process, which rings the doorbells.
            self.env["DURABLE_BROKER_DIR"] = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]

    def _spawn(self, name: str, args: list[str], app: str = "config", **env: str) -> subprocess.Popen:
        path = self.log_dir / f"{name}.log"
        with open(path, "ab") as log:
            process = subprocess.Popen(
                [CELERY, "-A", app, *args],
                cwd=ROOT,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so SIGKILL takes pool children too
            )
        process.log_path = path
        process.node = name
        self.processes.append(process)
        return process

    def worker(
        self, name: str, pool: str = "solo", concurrency: int = 1, queues: str = ""
    ) -> subprocess.Popen:
        return self._spawn(
            name,
            [
                "worker",
                "-Q",
                queues or self.queue,
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

    def stock_worker(self, name: str, concurrency: int) -> subprocess.Popen:
        """A stock Celery worker (harness.stock): Celery's defaults, its prefork pool, acks_late."""
        args = ["worker", "-Q", self.queue, "-n", f"{name}-{self.queue}@%h", f"--concurrency={concurrency}"]
        return self._spawn(
            name, [*args, "-l", "warning"], app="harness.stock", STOCK_DONE_DIR=str(self.done_dir)
        )

    @property
    def done_dir(self) -> Path:
        """Where the stock worker records finished chains, one file per chain."""
        folder = self.log_dir / "chains-done"
        folder.mkdir(exist_ok=True)
        return folder

    def beat(self) -> subprocess.Popen:
        return self._spawn("beat", ["beat", "-l", "info", "-s", str(self.log_dir / "beat-schedule")])

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL the whole process group: the machine lost power."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    @staticmethod
    def freeze(process: subprocess.Popen) -> None:
        """SIGSTOP the whole process group: the machine stalled (a VM paused, swap storm, GC pause)."""
        os.killpg(process.pid, signal.SIGSTOP)

    @staticmethod
    def thaw(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-tail:]}" for p in self.processes
        )


def database_url(settings_dict: dict, vendor: str) -> str:
    """A DATABASE_URL naming the given connection's database, for child processes."""
    if vendor == "sqlite":
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    return f"postgres://{auth}@{host}:{settings_dict.get('PORT') or 5432}/{settings_dict['NAME']}"


def process_tree(pid: int) -> list[int]:
    """The pid and its direct children (a prefork worker's pool processes)."""
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [pid, *(int(line) for line in result.stdout.split())]


def broker_kind(url: str | None = None) -> str:
    """The broker named by a URL (the configured one by default): filesystem, redis, amqp or memory."""
    scheme = (url or settings.CELERY_BROKER_URL).split("://", 1)[0]
    return {"rediss": "redis", "pyamqp": "amqp"}.get(scheme, scheme)


def wipe_broker(queue: str) -> None:
    """Lose every queued message, as a broker restart without persistence would.

    Redis loses this database (FLUSHDB: others may share the server); RabbitMQ and the
    filesystem broker lose the given queue's waiting messages, so other users of the
    same vhost or folder are not disturbed. (RabbitMQ keeps the messages its consumers
    hold unacknowledged: a worker that dies gives them back, as after a real restart
    a durable queue would.)
    """
    kind = broker_kind()
    if kind == "redis":
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    elif kind == "amqp":
        _amqp_queue(queue, lambda channel: channel.queue_purge(queue))
    elif kind == "filesystem":
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        for message in folder.glob(f"*.{queue}.msg"):
            message.unlink(missing_ok=True)
    else:
        raise NotImplementedError(f"cannot wipe broker {settings.CELERY_BROKER_URL}")


def broker_holds_messages(queue: str) -> bool:
    """Whether the queue has messages waiting for a consumer."""
    kind = broker_kind()
    if kind == "redis":
        import redis

        return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(queue) > 0
    if kind == "amqp":
        return (
            _amqp_queue(queue, lambda channel: channel.queue_declare(queue, passive=True).message_count) or 0
        ) > 0
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    return any(folder.glob(f"*.{queue}.msg"))


def forget_queue(queue: str) -> None:
    """Delete a private queue on RabbitMQ, where it would outlive the cluster (Redis drops an empty list)."""
    if broker_kind() == "amqp":
        _amqp_queue(queue, lambda channel: channel.queue_delete(queue))


def _amqp_queue(queue: str, operation):
    """Apply an operation to a RabbitMQ queue; None when the queue does not exist (yet)."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    with Connection(settings.CELERY_BROKER_URL, connect_timeout=10) as broker:
        try:
            return operation(broker.channel())
        except NotFound:
            return None
