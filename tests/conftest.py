import pytest

from runs import dispatch, heartbeat
from runs.engine import execute_run
from runs.models import WorkerProcess


@pytest.fixture(autouse=True)
def _in_process_runtime(settings):
    # Tests drive the engine in this process: no heartbeat thread writing behind
    # their back, and a fresh worker identity per test.
    settings.DURABLE_HEARTBEAT_THREAD = False
    heartbeat._current.update(pid=None, name=None)


class Doorbells:
    """Stands in for the broker: records which runs were dispatched, in order."""

    def __init__(self):
        self.rung: list[int] = []

    def ring(self, run_id, queue):
        self.rung.append(run_id)

    def drain(self, limit: int = 1000) -> list[str]:
        """Answer every doorbell, as a worker would, until none are left."""
        outcomes = []
        while self.rung and len(outcomes) < limit:
            outcomes.append(execute_run(self.rung.pop(0)))
        return outcomes


@pytest.fixture
def doorbells(monkeypatch):
    bells = Doorbells()
    monkeypatch.setattr(dispatch, "ring", bells.ring)
    return bells


def lapse_leases():
    """Make every worker process look dead, as if its machine had lost power."""
    WorkerProcess.objects.all().delete()
    heartbeat._current.update(pid=None, name=None)
