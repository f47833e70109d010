"""What the engine needs from a project's Celery app: `configure(app)`, called once where
the app is made (config/celery.py does, and so does a project that installs the apps).

It adds the worker bootsteps (runs.bootsteps: the liveness supervisor, which heartbeats
and sweeps from each worker's main process, and prompt reports of killed pool processes)
and sets the worker options the durability promises rest on, over the project's own:
one doorbell prefetched at a time, the prompt pool (runs.pool), and a short wait for a dead
child's result. The engine's tasks acknowledge late by themselves (runs.tasks). Beat's
entries are runs.conf.BEAT_SCHEDULE. (Loaded before Django is set up: no model imports.)
"""

from celery import Celery, current_app

from runs.bootsteps import LivenessSupervisor, PromptChildLossReports

WORKER_OPTIONS = {
    # A worker holds one doorbell beyond those it executes: the rest stay on the queue
    # for other workers instead of waiting behind a long run.
    "worker_prefetch_multiplier": 1,
    # The prefork pool with a prompter supervisor (runs.pool); --pool=prefork uses it too.
    "worker_pool": "runs.pool:TaskPool",
    # Results are not used; the report of a lost child is what recovers its run at once.
    "worker_lost_wait": 0.2,
}


def configure(app: Celery) -> Celery:
    app.add_defaults(WORKER_OPTIONS)
    app.steps["worker"].add(PromptChildLossReports)
    app.steps["worker"].add(LivenessSupervisor)
    return app


def embedded_broker() -> bool:
    """Whether the project's Celery app uses the filesystem broker (runs.broker)."""
    return (current_app.conf.broker_url or "").startswith("filesystem://")
