"""A simulated payment API that times out at random and honours idempotency keys.

Like a real provider, it keeps a ledger keyed by the client's idempotency key:
a request that repeats a key gets the original payment back instead of moving
money again. That is what makes retrying a timed-out refund safe, including the
nasty case where the payment went through and only the answer was lost.

Fault injection (settings): AGENTS_PAYMENT_FAILURE_RATE is the share of requests
that time out, half of them after the money moved; AGENTS_PAYMENT_TIMEOUTS_PER_KEY
makes the first N requests of every key time out after the money moved; an order's
`gateway_down_until` makes every request for it time out before anything happens.
"""

from __future__ import annotations

import random
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agentkit.models import Order, Payment, PaymentRequest
from runs.workflow import NonRetryableError


class PaymentTimeout(TimeoutError):
    """The payment API did not answer. The payment may or may not have gone through."""


class PaymentRejected(NonRetryableError):
    """The payment API refused the request; repeating it cannot help."""


def refund(order_number: str, amount_cents: int, *, idempotency_key: str) -> dict:
    """Pay `amount_cents` back to the customer of an order, at most once per idempotency key."""
    if not idempotency_key:
        raise PaymentRejected("an idempotency key is required")
    if amount_cents <= 0:
        raise PaymentRejected(f"refund amount must be positive, got {amount_cents}")
    order = Order.objects.filter(number=order_number).first()
    if order is None:
        raise PaymentRejected(f"no order {order_number}")
    seen = PaymentRequest.objects.filter(idempotency_key=idempotency_key).count()

    def log(outcome: str) -> None:
        PaymentRequest.objects.create(
            idempotency_key=idempotency_key,
            order_number=order_number,
            amount_cents=amount_cents,
            outcome=outcome,
        )

    if order.gateway_down_until and order.gateway_down_until > timezone.now():
        log("timeout-before")
        until = timezone.localtime(order.gateway_down_until).strftime("%H:%M:%S")
        raise PaymentTimeout(f"payment gateway unavailable (simulated outage until {until} UTC)")
    failure = _failure(seen)
    if failure == "timeout-before":
        log(failure)
        raise PaymentTimeout("payment API timed out before processing the request")
    payment, created = _pay(order, amount_cents, idempotency_key)
    if failure == "timeout-after":
        log(failure)
        raise PaymentTimeout("payment API timed out (the refund went through; the reply was lost)")
    log("paid" if created else "replayed")
    return {
        "reference": payment.reference,
        "order": order_number,
        "amount_cents": -payment.amount_cents,
        "idempotency_key": idempotency_key,
        "replayed": not created,
    }


def _failure(requests_seen: int) -> str | None:
    if requests_seen < settings.AGENTS_PAYMENT_TIMEOUTS_PER_KEY:
        return "timeout-after"
    if random.random() < settings.AGENTS_PAYMENT_FAILURE_RATE:
        return random.choice(["timeout-before", "timeout-after"])
    return None


def _pay(order: Order, amount_cents: int, key: str) -> tuple[Payment, bool]:
    existing = Payment.objects.filter(idempotency_key=key).first()
    if existing is None:
        try:
            with transaction.atomic():
                existing = Payment.objects.create(
                    idempotency_key=key,
                    order=order,
                    amount_cents=-amount_cents,
                    reference="re_" + uuid.uuid4().hex[:20],
                )
            return existing, True
        except IntegrityError:  # a concurrent request with the same key got there first
            existing = Payment.objects.get(idempotency_key=key)
    if existing.order_id != order.pk or existing.amount_cents != -amount_cents:
        raise PaymentRejected(f"idempotency key {key} was already used for a different refund")
    return existing, False


def paid_total(order_number: str) -> int:
    """Cents refunded to an order's customer, from the ledger."""
    return -sum(Payment.objects.filter(order__number=order_number).values_list("amount_cents", flat=True))
