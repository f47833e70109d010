"""Plain Celery tasks: the non-durable baseline the benchmark compares against."""

import time

from celery import shared_task

from harness.models import ChainDone


@shared_task(name="harness.plain_noop", ignore_result=True)
def plain_noop(*args, **kwargs) -> None:
    return None


@shared_task(name="harness.plain_chain_done", ignore_result=True)
def plain_chain_done(chain: str) -> None:
    ChainDone.objects.create(chain=chain, finished_at=time.time())
