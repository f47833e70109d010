"""Notifications with real processes: beat finds a failed run, a worker delivers it durably."""

import hashlib
import hmac

import pytest

from notifications.models import Delivery, Rule
from runs.models import Run, Status
from tests.processes import Cluster, wait_for
from tests.test_notifications import Receiver

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]
SECRET = "shh-acceptance-secret-456"


def test_a_failed_run_is_delivered_once_signed_and_retried_while_the_receiver_answers_500(tmp_path):
    hook = Receiver(failures=1)
    rule = Rule.objects.create(name="ops", url=hook.url, secret=SECRET, events=["failed"])
    cluster = Cluster(tmp_path, DURABLE_NOTIFY_POLL_SECONDS="0.3")
    try:
        cluster.worker("solo")
        cluster.beat()
        run = Run.objects.start("malformed", {}, queue=cluster.queue)
        wait_for(lambda: len(hook.accepted()) == 1, 90, "one accepted delivery", cluster)
        delivery = Delivery.objects.get(rule=rule)
        wait_for(
            lambda: Run.objects.get(pk=delivery.delivery_run_id).status == Status.SUCCEEDED,
            30,
            "the delivery run to finish",
            cluster,
        )
        # Beat keeps scanning: a later failed run is notified, and the first is not again.
        later = Run.objects.start("malformed", {}, queue=cluster.queue)
        wait_for(lambda: len(hook.accepted()) == 2, 90, "the later run's delivery", cluster)
    finally:
        cluster.stop()
        hook.server.shutdown()

    assert [body["run_id"] for body in hook.accepted()] == [run.pk, later.pk]
    assert [status for status, _, _ in hook.requests] == [500, 200, 200]
    for _status, headers, body in hook.requests:
        timestamp = headers["X-Durable-Timestamp"]
        expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Durable-Signature"] == f"sha256={expected}"
        assert SECRET.encode() not in body
    assert Delivery.objects.filter(rule=rule, run=run).count() == 1
    # The refused attempt is recorded on the first delivery's run, like any step's.
    assert delivery.delivery_run.attempts.count() == 1
