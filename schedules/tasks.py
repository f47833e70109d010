from celery import shared_task

from schedules.models import fire_due


@shared_task(name="schedules.fire_due", ignore_result=True)
def fire_schedules() -> int:
    """Beat's clock for schedules: start the runs of every due tick (once per tick)."""
    return len(fire_due())
