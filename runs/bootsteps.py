"""A worker bootstep that makes the pool report a killed child within a fraction of a second.

When a prefork child dies mid-task, billiard notices the exit at once but reports the
task as lost (WorkerLostError, which runs.tasks turns into an immediate recovery of
the run) only on its *next* pool maintenance, which otherwise comes every 5 seconds.
This step runs that maintenance four times a second. No Django imports here: the
Celery app loads this module before Django is set up.
"""

from celery import bootsteps

MAINTENANCE_INTERVAL = 0.25  # seconds


class PromptChildLossReports(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool", "celery.worker.components:Hub"}

    def start(self, worker):
        maintain = getattr(worker.pool, "maintain_pool", None)
        if worker.hub is not None and maintain is not None:
            worker.hub.call_repeatedly(MAINTENANCE_INTERVAL, maintain)
