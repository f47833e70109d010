from celery import shared_task
from celery.signals import worker_process_shutdown

from runs import engine, executor, fanout, recovery

SHUTDOWN_WAIT = 10.0  # seconds a stopping pool process waits for its runs to reach a step boundary


# A doorbell held by a pool process that dies (killed, out of memory) goes back to the
# queue instead of being acknowledged with it: a duplicate claims nothing (runs.engine),
# a lost one would leave its run waiting for the sweep to ring again. Acknowledged late
# whatever the project's CELERY_TASK_ACKS_LATE: reject_on_worker_lost needs it.
@shared_task(name="runs.execute", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def execute(run_id: int) -> str:
    # Each claim takes a fresh lease token (not the message id): a redelivered copy of
    # this message must not be able to act under a claim the sweep has taken back.
    if executor.in_pool_process():
        executor.get().submit(run_id)  # one of this process's run threads executes it
        return "handed to a run thread"
    return engine.execute_run(run_id)


@shared_task(name="runs.execute_branch", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def execute_branch(branch_id: int) -> str:
    return fanout.execute_branch(branch_id)


@shared_task(name="runs.tasks.sweep", ignore_result=True)
def sweep() -> str:
    return str(recovery.sweep())


@worker_process_shutdown.connect
def hand_back_runs(**kwargs) -> None:
    """A pool process that is shutting down hands its runs back at their next step boundary."""
    running = executor.current()
    if running is not None:
        running.drain(timeout=SHUTDOWN_WAIT)
