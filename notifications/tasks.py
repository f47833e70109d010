from celery import shared_task

from notifications.models import scan


@shared_task(name="notifications.scan", ignore_result=True)
def scan_for_notifications() -> int:
    """Beat's clock for notifications: start a delivery for each new (rule, run, event)."""
    return len(scan())
