"""Many runs at once in one pool process, their checkpoints committed together.

A process that executes one run at a time spends most of a short step waiting for that
step's commit. Here a prefork pool process executes up to DURABLE_RUNS_PER_PROCESS runs,
each on a thread of its own (so a slow model call of one run does not hold up the others),
and one committer thread writes the checkpoints that are ready at the same moment in one
transaction: one commit, one fsync, for all of them (group commit). Each run still waits
until its own checkpoint is committed before its next step starts, so a crash loses at
most the steps whose commit had not returned, which run again with the same idempotency
keys, as after any crash.

The Celery task hands its run to a free thread and returns; while every thread is busy it
waits, so the pool process takes no more doorbells than it can serve. The run's lease names
this process, so the worker's supervisor (runs.liveness) beats for it and takes its runs
back if it dies, whichever thread held them.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

log = logging.getLogger(__name__)

MAX_GROUP = 64  # writes per transaction, at most
IDLE_CONNECTION_SECONDS = 30.0


@dataclass(eq=False)
class _Write:
    operation: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommitter:
    """Runs the writes handed to it, all those waiting at once in one transaction.

    Each write is a short conditional statement or two (a claim, a checkpoint that
    advances its run, a finish) of one run, atomic by itself; the run's thread waits for
    the commit.
    """

    def __init__(self):
        self._waiting: list[_Write] = []
        self._ready = threading.Condition()
        threading.Thread(target=self._loop, daemon=True, name="durable-committer").start()

    def call(self, method: Callable[..., Any], *args, **kwargs) -> Any:
        """method(*args, **kwargs), committed with whatever else is ready; its result."""
        write = _Write(functools.partial(method, *args, **kwargs))
        with self._ready:
            self._waiting.append(write)
            self._ready.notify()
        write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                self._commit(group)
            except BaseException as exc:  # never leave a run thread waiting
                for write in group:
                    if not write.done.is_set() and write.error is None:
                        write.error = exc
            finally:
                for write in group:
                    write.done.set()

    def _commit(self, group: list[_Write]) -> None:
        try:
            if len(group) == 1:
                # Alone, a write needs no transaction around it: each is atomic by itself
                # (one statement, or its own transaction.atomic). Two round trips fewer
                # (BEGIN, COMMIT), which is what a lightly loaded process mostly commits.
                results = [group[0].operation()]
            else:
                with transaction.atomic():
                    results = [write.operation() for write in group]
        except (OperationalError, InterfaceError) as exc:
            # The connection failed (or the database restarted). Whether the commit landed
            # is unknown, so nothing is written again: every run thread stops as after its
            # own write failed, and gives its run back; replay reads what did land.
            connection.close()
            for write in group:
                write.error = exc
            return
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            # One write failed (a bug, a constraint): it must not fail the others. The
            # group was rolled back, so each is written again alone and only it fails.
            for write in group:
                self._commit_alone(write)
            return
        for write, result in zip(group, results, strict=True):
            write.result = result

    @staticmethod
    def _commit_alone(write: _Write) -> None:
        try:
            with transaction.atomic():
                write.result = write.operation()
        except Exception as exc:
            write.error = exc


class Executor:
    """The threads of one pool process that execute runs, and their committer."""

    def __init__(self, threads: int):
        self.committer = GroupCommitter()
        self.draining = threading.Event()
        self._free = threading.Semaphore(threads)
        self._runs: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._busy = 0
        self._busy_lock = threading.Lock()
        for number in range(threads):
            threading.Thread(target=self._serve, daemon=True, name=f"durable-run-{number}").start()

    def submit(self, run_id: int) -> None:
        """Hand a run to a free thread, waiting while none is free."""
        self._free.acquire()
        self._runs.put(run_id)

    def _serve(self) -> None:
        from runs import engine

        while True:
            try:
                run_id = self._runs.get(timeout=IDLE_CONNECTION_SECONDS)
            except queue.Empty:
                connection.close()  # an idle thread does not keep a database connection open
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                engine.execute_run(run_id, executor=self)
            except Exception:
                log.exception("run %s: the executor thread failed", run_id)
            finally:
                # After a database error (a restart, a killed session) start afresh; a
                # healthy connection is kept for the next run, with no health-check query.
                if connection.errors_occurred:
                    connection.close_if_unusable_or_obsolete()
                with self._busy_lock:
                    self._busy -= 1
                self._free.release()

    def drain(self, timeout: float) -> None:
        """Hand every run back at its next step boundary, and wait (a while) until they are.

        A run whose step outlasts the wait stays held by this process, which is about to
        exit: the supervisor, or another worker's sweep, takes it back then.
        """
        self.draining.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._busy_lock:
                if self._busy == 0 and self._runs.empty():
                    return
            time.sleep(0.05)


_executor: dict[int, Executor] = {}
_lock = threading.Lock()


def in_pool_process() -> bool:
    """Whether this is a prefork pool process, which executes runs on the executor's threads.

    Not on the embedded broker: there the pool processes take tasks from one shared pipe
    under a lock that an idle pool process holds while it waits, and a pool process killed
    while idle would keep it for ever. Idle is where a pool process spends its time when
    its threads execute the runs, so there each executes one run at a time, itself.
    """
    from runs.celery import embedded_broker
    from runs.liveness import SUPERVISOR_ENV

    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    return (
        settings.DURABLE_RUNS_PER_PROCESS > 1
        and bool(supervisor)
        and supervisor.split(":")[1] != str(os.getpid())  # the solo pool executes in the supervisor
        and not embedded_broker()
    )


def get() -> Executor:
    """This process's executor, started on first use (after the fork: threads do not survive it)."""
    pid = os.getpid()
    with _lock:
        if pid not in _executor:
            _executor.clear()
            _executor[pid] = Executor(settings.DURABLE_RUNS_PER_PROCESS)
        return _executor[pid]


def current() -> Executor | None:
    return _executor.get(os.getpid())
