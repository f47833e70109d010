from celery import shared_task
from celery.exceptions import WorkerLostError
from celery.signals import task_failure

from runs import engine, fanout, recovery


@shared_task(name="runs.execute", ignore_result=True)
def execute(run_id: int) -> str:
    # The message id doubles as the lease token, so the pool's main process can
    # tell exactly which claim died with a killed child (see below).
    return engine.execute_run(run_id, token=execute.request.id)


@shared_task(name="runs.execute_branch", ignore_result=True)
def execute_branch(branch_id: int) -> str:
    return fanout.execute_branch(branch_id, token=execute_branch.request.id)


@shared_task(name="runs.tasks.sweep", ignore_result=True)
def sweep() -> str:
    return str(recovery.sweep())


@task_failure.connect
def recover_after_lost_child(sender=None, task_id=None, exception=None, args=None, **kwargs):
    """Runs in the worker's main process when a prefork child dies mid-task."""
    if not isinstance(exception, WorkerLostError) or not args:
        return
    name = getattr(sender, "name", "")
    if name == "runs.execute":
        recovery.recover_lost_process_run(args[0], task_id)
    elif name == "runs.execute_branch":
        recovery.recover_lost_process_branch(args[0], task_id)
