"""Who is alive, and what they hold. The rules:

- Every claim of a run or a branch takes a fresh token and names its holder, the process
  executing it (`lease_owner`). Writes under a lease are conditional on the token, so a
  holder that was given up on (frozen, partitioned) has its late writes refused.
- A holder is alive while its WorkerProcess row is younger than DURABLE_LEASE_TIMEOUT.
- In a Celery prefork worker the pool processes' rows are kept fresh by the worker's main
  process (the Supervisor below), which runs no steps: a step may hold the GIL for minutes
  and its lease stays alive. The supervisor beats only for pool processes that exist and
  are not stopped, and not at all while it is stopped itself: a frozen worker (SIGSTOP, a
  paused VM) or a dead machine falls silent, and the sweep takes its runs back after
  DURABLE_LEASE_TIMEOUT.
- On every tick (a few times a second) the supervisor takes back at once the runs and
  branches of a pool process that died, and kills the pool process executing a run that an
  operator cancelled or terminated, or whose step has outlived DURABLE_MAX_STEP_SECONDS by
  DURABLE_KILL_GRACE (the in-process step timer cannot interrupt C code that holds the GIL).
- Elsewhere (the solo pool, a process executing runs directly) a process beats for itself
  from a thread, which a GIL-holding step can starve: production uses the prefork pool.
- A holder that hits a database error gives its run back itself (`give_back`): that is not
  a lost worker and does not count towards dead-lettering.
- The sweep (runs.recovery) runs in every worker's main process too, on a thread of its own
  every DURABLE_SWEEP_INTERVAL: a queue full of long runs cannot delay it the way it delays
  a sweep task. It never waits on a row lock, and after a gap in its own schedule (a
  database outage nobody could beat through) it first waits one lease timeout for the
  survivors to beat again before it calls anyone dead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q
from django.utils import timezone

from runs import pool
from runs.models import Run, Status, WorkerProcess
from steps.models import Branch, BranchStatus

log = logging.getLogger(__name__)

# Set by the worker's main process before it forks its pool (runs.bootsteps), so each
# pool process knows the name of the supervisor that beats for it.
SUPERVISOR_ENV = "DURABLE_SUPERVISOR"
TICK = 0.25  # seconds between supervisor passes, at most

_lock = threading.Lock()
_current: dict = {"pid": None, "name": None}


def new_name(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}:{uuid.uuid4().hex[:6]}"


def child_name(supervisor: str, pid: int) -> str:
    return f"{supervisor}/{pid}"


def process_name() -> str:
    """This process's identity as a lease holder, registered (with a first beat) on first use."""
    with _lock:
        pid = os.getpid()
        if _current["pid"] != pid:  # first use, or a forked child
            supervisor = os.environ.get(SUPERVISOR_ENV, "")
            if supervisor and supervisor.split(":")[1] == str(pid):
                name, beat_myself = supervisor, False  # the solo pool: the supervisor executes
            elif supervisor:
                name, beat_myself = child_name(supervisor, pid), False
            else:
                name, beat_myself = new_name(pid), settings.DURABLE_HEARTBEAT_THREAD
            WorkerProcess.beat(name, socket.gethostname(), pid)
            _current.update(pid=pid, name=name)
            if beat_myself:
                threading.Thread(target=_beat_forever, args=(name,), daemon=True, name="durable-beat").start()
        return _current["name"]


def _beat_forever(name: str) -> None:
    while True:
        time.sleep(settings.DURABLE_HEARTBEAT_INTERVAL)
        try:
            WorkerProcess.beat(name, socket.gethostname(), os.getpid())
        except DatabaseError:
            log.warning("heartbeat for %s failed", name, exc_info=True)
            connection.close()


def give_back(run_id: int, token: str, reason: str) -> str:
    """Hand a run this process could not go on with back for dispatch, however long the
    database takes to answer: the lease stays alive meanwhile, so nobody else takes it."""

    def attempt():
        run = Run.objects.only("pk", "queue", "workflow", "parent_id", "parent_position").get(pk=run_id)
        return run.give_back(token, reason) or "lost"

    return _once_the_database_answers(attempt)


def give_back_branch(branch_id: int, token: str) -> bool:
    return _once_the_database_answers(lambda: Branch.give_back(branch_id, token))


def _once_the_database_answers(attempt: Callable[[], Any]) -> Any:
    delay = 0.05
    while True:
        try:
            return attempt()
        except DatabaseError:
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (R, S, D, T, Z...), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here: alive or not is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "S"


STOPPED, GONE = frozenset("Tt"), frozenset("ZX")


class Supervisor:
    """Runs in a worker's main process: beats, and acts, for the pool processes it forked."""

    def __init__(self, name: str, children: Callable[[], list[int]], queues: list[str] | None = None):
        self.name = name
        self.children = children
        self.queues = queues or []
        # Pool processes this supervisor killed to stop one run, and that run: the other runs
        # such a process was executing (runs.executor) are handed back uncounted, since
        # no worker was lost.
        self._killed: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, daemon=True, name="durable-supervisor"),
            threading.Thread(target=self._sweep_loop, daemon=True, name="durable-sweeper"),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        self._every(lambda: min(TICK, settings.DURABLE_HEARTBEAT_INTERVAL), self.tick, "pass")

    def _sweep_loop(self) -> None:
        from runs.recovery import sweep

        # Spread over time, so that the workers' sweeps do not come in lockstep.
        self._every(lambda: settings.DURABLE_SWEEP_INTERVAL * random.uniform(0.75, 1.25), sweep, "sweep")

    def _every(self, interval: Callable[[], float], work: Callable[[], Any], what: str) -> None:
        while not self._stop.wait(interval()):
            try:
                with self._no_fork_meanwhile():
                    work()
            except DatabaseError:
                # Database restarting or unreachable: drop the connection and try again.
                log.warning("supervisor %s: database error in a %s", self.name, what, exc_info=True)
                connection.close()
            except Exception:
                log.exception("supervisor %s: a %s failed", self.name, what)

    @staticmethod
    def _no_fork_meanwhile():
        # A pool process forked inside this work would inherit SQLite's lock (runs.pool).
        return pool.FORK_GUARD if connection.vendor == "sqlite" else contextlib.nullcontext()

    def tick(self) -> None:
        # What its processes hold is read before the processes are looked at: a process
        # forked after this read holds nothing in it, so it cannot be mistaken for dead.
        prefix = f"{self.name}/"
        held = Q(lease_owner__startswith=prefix) | Q(lease_owner=self.name)  # pool processes, or itself
        runs = list(Run.objects.filter(held, status=Status.RUNNING))
        branches = list(
            Branch.objects.filter(status=BranchStatus.RUNNING, lease_owner__startswith=prefix).select_related(
                "run"
            )
        )
        self.beat([pid for pid in self.children() if process_state(pid) not in STOPPED | GONE | {None}])
        for branch in branches:
            if is_gone(holder_pid(branch.lease_owner)):
                from runs.recovery import recover_branch

                recover_branch(branch)
        for run in runs:
            if run.lease_owner == self.name:
                self.enforce(run, 0)  # the solo pool: this very process executes the step
                continue
            pid = holder_pid(run.lease_owner)
            if is_gone(pid) and pid in self._killed:
                reason = f"its pool process was killed to stop run {self._killed[pid]}"
                outcome = run.give_back(run.lease_token, reason)
                log.warning("run %s: %s; handed back (%s)", run.pk, reason, outcome)
            elif is_gone(pid):
                outcome = run.recover("its worker process died")
                log.warning("run %s: pool process %s died; recovered (%s)", run.pk, pid, outcome)
            else:
                self.enforce(run, pid)
        held_by = {holder_pid(run.lease_owner) for run in runs if run.lease_owner != self.name}
        for pid in list(self._killed):
            if pid not in held_by:
                del self._killed[pid]  # all its runs handed back

    def beat(self, pids: list[int]) -> None:
        WorkerProcess.beat(self.name, socket.gethostname(), os.getpid(), self.queues)
        names = [child_name(self.name, pid) for pid in pids]
        if names:
            WorkerProcess.objects.filter(name__in=names).update(heartbeat_at=timezone.now())

    def enforce(self, run: Run, pid: int) -> None:
        """Kill the process of a run that must stop now, then end the run as asked."""
        overdue = timezone.now() - timedelta(
            seconds=settings.DURABLE_MAX_STEP_SECONDS + settings.DURABLE_KILL_GRACE
        )
        if run.cancel_requested:
            cause, message = "Cancelled", "the step was interrupted: an operator cancelled the run"
        elif run.terminate_requested:
            cause, message = "Terminated", "the step was interrupted: an operator terminated the run"
        elif settings.DURABLE_MAX_STEP_SECONDS and run.updated_at < overdue:
            cause = "StepTimeout"
            message = (
                f"the step ran past the maximum step duration of {settings.DURABLE_MAX_STEP_SECONDS:g}s "
                "and did not yield to its timer; its worker process was killed"
            )
        else:
            return
        still_held = Run.objects.filter(pk=run.pk, status=Status.RUNNING, lease_token=run.lease_token)
        if pid and still_held.exists():
            self._killed[pid] = run.pk
            kill(pid)
        outcome = run.interrupted(run.lease_token, cause, message)
        log.warning("run %s: %s (pool process %s); now %s", run.pk, cause, pid or "-", outcome)


def holder_pid(holder: str) -> int:
    return int(holder.rpartition("/")[2])


def is_gone(pid: int) -> bool:
    state = process_state(pid)
    return state is None or state in GONE


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
