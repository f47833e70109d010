"""Notifications: rules, deduplicated deliveries, each a durable run that retries."""

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from notifications.models import Delivery, Event, Rule, scan
from notifications.tasks import scan_for_notifications
from runs.models import AuditEntry, Run, Status
from runs.recovery import sweep
from tests.factories import make_operator, make_run, make_viewer

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "shh-webhook-secret-123"


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to the first `failures` requests."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.requests: list[tuple[int, dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.requests) < receiver.failures else 200
                receiver.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        return [json.loads(body) for status, _, body in self.requests if status == 200]


@pytest.fixture
def receiver():
    made = []

    def make(failures: int = 0) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]

    yield make
    for server in made:
        server.server.shutdown()


def webhook_rule(url: str, events=("failed",), **fields) -> Rule:
    return Rule.objects.create(name="ops", url=url, secret=SECRET, events=list(events), **fields)


def failed_run(doorbells) -> Run:
    run = Run.objects.start("malformed", {})
    assert doorbells.drain() == ["failed"]
    return run


def deliver_all(doorbells, rounds: int = 6) -> None:
    """Run the delivery runs, letting each retry backoff elapse in turn."""
    doorbells.drain()
    start = timezone.now()
    for round in range(1, rounds + 1):
        with time_machine.travel(start + timedelta(minutes=round), tick=False):
            sweep()
            doorbells.drain()


def test_a_webhook_gets_one_signed_delivery_per_failed_run_retried_while_it_answers_500(doorbells, receiver):
    hook = receiver(failures=2)
    rule = webhook_rule(hook.url)
    runs = [failed_run(doorbells), failed_run(doorbells)]
    assert len(scan()) == 2
    assert scan() == [] and scan_for_notifications() == 0  # deduplicated per run and event
    deliver_all(doorbells)

    accepted = hook.accepted()
    assert sorted(body["run_id"] for body in accepted) == [run.pk for run in runs]
    assert len(hook.requests) == 4  # two refused (500), then one accepted per run
    for _status, headers, body in hook.requests:
        timestamp = headers["X-Durable-Timestamp"]
        expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Durable-Signature"] == f"sha256={expected}"
        assert SECRET.encode() not in body
    first = accepted[0]
    assert first["event"] == "failed" and first["workflow"] == "malformed"
    assert first["text"].startswith(f"Run {first['run_id']} of malformed: failed")
    # Each delivery is a durable run, with its refused attempts recorded.
    for delivery in Delivery.objects.filter(rule=rule):
        assert delivery.delivery_run.status == Status.SUCCEEDED
        assert delivery.delivery_run.input == {"delivery_id": delivery.pk}
    assert sum(d.delivery_run.attempts.count() for d in Delivery.objects.all()) == 2


def test_email_goes_through_djangos_mail(doorbells):
    Rule.objects.create(
        name="mail", channel="email", email_to="ops@example.com, lead@example.com", events=["failed"]
    )
    run = failed_run(doorbells)
    scan()
    doorbells.drain()
    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "lead@example.com"]
    assert message.subject == f"Run {run.pk} of malformed: failed <{reverse('run_detail', args=[run.pk])}>"
    assert "card number is malformed" in message.body


def test_a_rule_matches_its_workflow_and_events_only(doorbells, receiver):
    hook = receiver()
    webhook_rule(hook.url, events=["waiting_for_person", "succeeded_after_recovery"], workflow="approval")
    failed_run(doorbells)
    waiting = Run.objects.start("approval", {})
    doorbells.drain()
    recovered = make_run(Status.SUCCEEDED, workflow="approval", recovery_count=1)
    make_run(Status.SUCCEEDED, workflow="approval")  # never recovered: nothing to say
    started = scan()
    assert sorted((d.run_id, d.event) for d in started) == sorted(
        [(waiting.pk, Event.WAITING_FOR_PERSON), (recovered.pk, Event.RECOVERED)]
    )


def test_a_failed_delivery_notifies_nobody(doorbells, receiver):
    webhook_rule(receiver().url)
    make_run(Status.FAILED, workflow="notifications.deliver")
    assert scan() == []


def test_a_rule_needs_events_and_a_way_to_deliver():
    with pytest.raises(ValidationError, match="at least one event"):
        Rule(name="x", url="http://h", secret="s", events=[]).clean()
    with pytest.raises(ValidationError, match="Unknown events"):
        Rule(name="x", url="http://h", secret="s", events=["exploded"]).clean()
    with pytest.raises(ValidationError, match="URL and a secret"):
        Rule(name="x", url="http://h", events=["failed"]).clean()
    with pytest.raises(ValidationError, match="address"):
        Rule(name="x", channel="email", events=["failed"]).clean()


def test_the_test_button_is_a_post_for_operators_and_is_audited(client, doorbells, receiver):
    hook = receiver()
    rule = webhook_rule(hook.url)
    url = reverse("notification_test", args=[rule.pk])
    client.force_login(make_viewer())
    assert client.post(url).status_code == 403
    page = client.get(reverse("notification_list")).content.decode()
    assert "ops" in page and "Send a test" not in page
    client.force_login(make_operator())
    assert client.get(url).status_code == 405
    client.post(url, {"reason": "checking the hook"})
    doorbells.drain()
    (body,) = hook.accepted()
    assert body["event"] == "test" and body["run_id"] is None
    audit = AuditEntry.objects.get(action="notification-test")
    assert (audit.reason, audit.actor_name) == ("checking the hook", "otto")
    page = client.get(reverse("notification_list")).content.decode()
    assert "test delivery" in page and "Send a test" in page
