"""The built-in workflow that delivers one notification, durably, with retries.

Webhooks get a JSON body with a Slack-compatible `text` field, signed:
`X-Durable-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the rule's
secret>` and `X-Durable-Timestamp: <unix seconds>`. A receiver recomputes it and refuses
old timestamps. The body holds no secrets: no run input or output, error text redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from runs.redaction import redact
from runs.workflow import RetryPolicy, step, workflow

DELIVERY_RETRY = RetryPolicy(max_attempts=8, initial_interval=5, backoff_coefficient=3, max_interval=3600)
TIMEOUT = 10
MAX_ERROR = 500


class DeliveryRefused(Exception):
    """The receiver answered with an error status; the step retries with backoff."""


def payload(delivery) -> dict:
    run = delivery.run
    if run is None:
        about = {"run_id": None, "workflow": "", "status": ""}
        text = f"Test delivery for notification rule {delivery.rule.name}"
    else:
        link = settings.DURABLE_BASE_URL.rstrip("/") + reverse("run_detail", args=[run.pk])
        about = {
            "run_id": run.pk,
            "workflow": run.workflow,
            "status": run.status,
            "error_type": run.error_type,
            "error_message": redact(run.error_message or "")[:MAX_ERROR],
            "url": link,
        }
        text = f"Run {run.pk} of {run.workflow}: {delivery.get_event_display()} <{link}>"
        if run.error_type:
            text += f"\n{run.error_type}: {about['error_message']}"
    return {
        "event": delivery.event,
        "rule": delivery.rule.name,
        "delivery_id": delivery.pk,
        **about,
        "text": text,
    }


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@step(name="notifications.send", retry=DELIVERY_RETRY, timeout=TIMEOUT * 2)
def send(delivery_id: int) -> dict:
    from notifications.models import Channel, Delivery

    delivery = Delivery.objects.select_related("rule", "run").get(pk=delivery_id)
    body = payload(delivery)
    if delivery.rule.channel == Channel.EMAIL:
        subject = body["text"].splitlines()[0][:200]
        sent = send_mail(subject, body["text"], settings.DEFAULT_FROM_EMAIL, delivery.rule.recipients())
        return {"channel": "email", "sent": sent}
    data = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        delivery.rule.url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Durable-Timestamp": timestamp,
            "X-Durable-Signature": signature(delivery.rule.secret, timestamp, data),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return {"channel": "webhook", "status": response.status}
    except urllib.error.HTTPError as exc:
        raise DeliveryRefused(f"the receiver answered {exc.code}") from None


@workflow("notifications.deliver")
def deliver(ctx, data):
    return ctx.step(send, data["delivery_id"])
