import time

import pytest

from runs import dispatch, liveness, recovery
from runs.engine import execute_run
from runs.fanout import execute_branch
from runs.models import WorkerProcess
from tests import workflows
from tests.processes import Cluster


@pytest.fixture(autouse=True)
def _in_process_runtime(settings):
    # Tests drive the engine in this process: no heartbeat thread writing behind
    # their back, and a fresh worker identity per test.
    settings.DURABLE_HEARTBEAT_THREAD = False
    liveness._current.update(pid=None, name=None)


class Doorbells:
    """Stands in for the broker: records which runs and branches were dispatched, in order."""

    def __init__(self):
        self.rung: list[int] = []
        self.branches: list[int] = []

    def ring(self, run_id, queue):
        self.rung.append(run_id)

    def ring_branch(self, branch_id, queue):
        self.branches.append(branch_id)

    def drain(self, limit: int = 1000) -> list[str]:
        """Answer every run doorbell, as a worker would, until none are left."""
        outcomes = []
        while self.rung and len(outcomes) < limit:
            outcomes.append(execute_run(self.rung.pop(0)))
        return outcomes

    def drain_branches(self, order=None) -> list[str]:
        """Execute dispatched branches: all, or those at the given indexes of the list, in that order."""
        order = list(range(len(self.branches)) if order is None else order)
        chosen = [self.branches[i] for i in order]
        self.branches = [branch for i, branch in enumerate(self.branches) if i not in order]
        return [execute_branch(branch_id) for branch_id in chosen]

    def drain_all(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.rung and not self.branches:
                return
            self.drain()
            self.drain_branches()


@pytest.fixture
def doorbells(monkeypatch):
    bells = Doorbells()
    monkeypatch.setattr(dispatch, "ring", bells.ring)
    monkeypatch.setattr(dispatch, "ring_branch", bells.ring_branch)
    return bells


def lapse_leases():
    """Make every worker process look dead, as if its machine had lost power."""
    WorkerProcess.objects.all().delete()
    liveness._current.update(pid=None, name=None)
    # The sweep has been running steadily: it may call the silent dead at once.
    now = time.monotonic()
    recovery.steadiness.last_ok, recovery.steadiness.since = now, now - 3600


@pytest.fixture(autouse=True)
def _fresh_test_workflows():
    """The test workflows count calls and read toggles in module globals; start clean."""
    workflows.CALLS.clear()
    workflows.KEYS.clear()
    workflows.TOGGLES.clear()
    workflows.PAYMENTS.__init__()


@pytest.fixture
def cluster(tmp_path):
    """Real worker and beat processes on the test database; killed at the end."""
    workflows.create_ledger()
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.stop()
