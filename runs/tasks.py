from celery import shared_task

from runs import engine, fanout, recovery


@shared_task(name="runs.execute", ignore_result=True)
def execute(run_id: int) -> str:
    # Each claim takes a fresh lease token (not the message id): a redelivered copy of
    # this message must not be able to act under a claim the sweep has taken back.
    return engine.execute_run(run_id)


@shared_task(name="runs.execute_branch", ignore_result=True)
def execute_branch(branch_id: int) -> str:
    return fanout.execute_branch(branch_id)


@shared_task(name="runs.tasks.sweep", ignore_result=True)
def sweep() -> str:
    return str(recovery.sweep())
