"""The project's one workflow: a checkout whose steps are checkpointed (listed in
DURABLE_WORKFLOW_MODULES)."""

from runs.workflow import RetryPolicy, current_step, step, workflow


@step
def price(items: list[dict]) -> int:
    return sum(item["cents"] * item.get("quantity", 1) for item in items)


@step(retry=RetryPolicy(max_attempts=5))
def charge(customer: str, cents: int) -> dict:
    # A payment provider would deduplicate on this key across retries and crash-resumes.
    return {"customer": customer, "cents": cents, "charge": f"ch-{current_step().idempotency_key}"}


@workflow("checkout")
def checkout(ctx, data):
    cents = ctx.step(price, data["items"])
    receipt = ctx.step(charge, data["customer"], cents)
    return {"status": "paid", "cents": cents, "receipt": receipt["charge"]}
