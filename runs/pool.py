"""The prefork pool, with a supervisor that notices a killed child within a fraction of a second.

With a transport that cannot join Celery's event loop (the embedded filesystem broker),
billiard's supervisor thread maintains the pool every 0.8 s and reports a task whose
child died (WorkerLostError, which recovers the run at once, see runs.tasks) only on a
second pass: 0.8 to 1.6 s. This supervisor passes every 0.2 s. With Redis or RabbitMQ
the event loop maintains the pool instead (runs.bootsteps). Selected by the
CELERY_WORKER_POOL setting, which Celery also applies to `--pool=prefork`. (Loaded by
Celery before Django is set up: no project imports.)
"""

import time

from billiard import pool as billiard_pool
from billiard.exceptions import RestartFreqExceeded
from celery.concurrency import prefork

MAINTENANCE_INTERVAL = 0.2  # seconds


class PromptSupervisor(billiard_pool.Supervisor):
    def body(self):
        pool = self.pool
        try:
            while self._state == billiard_pool.RUN and pool._state == billiard_pool.RUN:
                pool._maintain_pool()
                time.sleep(MAINTENANCE_INTERVAL)
        except RestartFreqExceeded:
            pool.close()
            pool.join()
            raise


class BlockingPool(billiard_pool.Pool):
    Supervisor = PromptSupervisor


class TaskPool(prefork.TaskPool):
    BlockingPool = BlockingPool
