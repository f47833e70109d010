"""Worker bootsteps: the liveness supervisor, and prompt reports of killed pool processes.

No Django imports at module level: the Celery app loads this module before Django is set up.
"""

import os
import socket
import uuid

from celery import bootsteps

MAINTENANCE_INTERVAL = 0.25  # seconds


class PromptChildLossReports(bootsteps.StartStopStep):
    """Run billiard's pool maintenance four times a second (it otherwise comes every 5 s),
    so a killed pool process is replaced at once."""

    requires = {"celery.worker.components:Pool", "celery.worker.components:Hub"}

    def start(self, worker):
        maintain = getattr(worker.pool, "maintain_pool", None)
        if worker.hub is not None and maintain is not None:
            worker.hub.call_repeatedly(MAINTENANCE_INTERVAL, maintain)


class LivenessSupervisor(bootsteps.StartStopStep):
    """Beats for the pool processes from the main process, which runs no steps (runs.liveness)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        # Named before the pool forks, so that every pool process inherits the name.
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        os.environ["DURABLE_SUPERVISOR"] = self.name
        self.supervisor = None

    def start(self, worker):
        from runs.liveness import Supervisor

        queues = sorted(worker.app.amqp.queues.consume_from or {})
        self.supervisor = Supervisor(self.name, lambda: pool_pids(worker.pool), queues)
        self.supervisor.start()

    def stop(self, worker):
        if self.supervisor is not None:
            self.supervisor.stop()


def pool_pids(pool) -> list[int]:
    """The pids of a prefork pool's processes; none for the solo and thread pools."""
    processes = getattr(getattr(pool, "_pool", None), "_pool", None) or []
    return [process.pid for process in list(processes) if process.pid]
