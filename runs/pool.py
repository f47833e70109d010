"""The prefork pool, with a supervisor that notices a killed child within a fraction of a second.

With a transport that cannot join Celery's event loop (the embedded filesystem broker),
billiard's supervisor thread maintains the pool every 0.8 s and reports a task whose
child died (WorkerLostError, which recovers the run at once, see runs.tasks) only on a
second pass: 0.8 to 1.6 s. This supervisor passes every 0.2 s. With Redis or RabbitMQ
the event loop maintains the pool instead (runs.bootsteps). Selected by the
CELERY_WORKER_POOL setting, which Celery also applies to `--pool=prefork`. (Loaded by
Celery before Django is set up: no project imports.)

Forks are guarded: SQLite keeps its file locks in process-wide memory, which a fork
copies. A pool process forked while a thread of the main process (the liveness
supervisor, runs.liveness) was inside an SQLite transaction inherits a write lock
that no thread of its own holds, and every write it tries fails with "database is
locked". The main process's threads do their SQLite work under FORK_GUARD, and the
pool forks under it too.
"""

import os
import threading
import time

from billiard import pool as billiard_pool
from billiard.exceptions import RestartFreqExceeded
from celery.concurrency import asynpool, prefork

MAINTENANCE_INTERVAL = 0.2  # seconds

FORK_GUARD = threading.Lock()


def _fresh_guard_in_child() -> None:
    # The forking thread held the guard across fork(); the child starts with it free.
    global FORK_GUARD
    FORK_GUARD = threading.Lock()


os.register_at_fork(after_in_child=_fresh_guard_in_child)


class GuardedFork:
    def _create_worker_process(self, i):
        with FORK_GUARD:
            return super()._create_worker_process(i)


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


class BlockingPool(GuardedFork, billiard_pool.Pool):
    Supervisor = PromptSupervisor


class AsynPool(GuardedFork, asynpool.AsynPool):
    pass


class TaskPool(prefork.TaskPool):
    Pool = AsynPool
    BlockingPool = BlockingPool
