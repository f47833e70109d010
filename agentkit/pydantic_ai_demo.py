"""The demo Pydantic AI agent: a shop assistant, made durable by agentkit.integrations.pydantic_ai.

An ordinary `pydantic_ai.Agent` with two tools: `look_up_order`, and `issue_refund`
through the simulated payment API (which times out now and then: its step retries with the
same idempotency key). A refund above REVIEW_ABOVE_CENTS needs a person's approval: the
run waits for an `approval` signal in the inbox. Its model is scripted (Pydantic AI's
`FunctionModel`), so the demo runs offline; give the agent a real model
(`Agent("openai:gpt-4o-mini", ...)`) and nothing else changes.

Imported by the `shop_assistant` workflow (agentkit.demos) when one of its runs executes, so
workers that never run it never load Pydantic AI.
"""

from __future__ import annotations

import re

from pydantic_ai import Agent, RunContext
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentkit import payments
from agentkit.integrations.pydantic_ai import DurableAgent, ToolOptions
from agentkit.models import Order
from agentkit.tools import idempotency_key
from runs.workflow import RetryPolicy

REVIEW_ABOVE_CENTS = 40_00
INSTRUCTIONS = (
    "You help customers of a small online shop. Look the order up first. Refund it when the customer "
    "reports a problem with it, then tell them what you did in two sentences, signed 'The shop'."
)


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """What a model would do with this shop's tickets, decided from the conversation so far."""
    ticket = next(p.content for m in messages for p in m.parts if isinstance(p, UserPromptPart))
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    answers = {p.tool_name: p for p in returns if p.outcome != "retried"}
    retries = {p.tool_name for p in returns if p.outcome == "retried"}  # the tool raised ModelRetry
    number = re.search(r"\b[A-Z]-\d{4}\b", str(ticket))
    if number is None:
        return ModelResponse(parts=[TextPart("Which order is it about? Its number looks like A-1001.")])
    if "look_up_order" in retries:
        return ModelResponse(parts=[TextPart(f"I could not find order {number.group(0)}. Please check it.")])
    if "look_up_order" not in answers:
        return ModelResponse(parts=[ToolCallPart("look_up_order", {"order_number": number.group(0)})])
    order = answers["look_up_order"].content
    wants_refund = re.search(r"refund|broken|damaged|never arrived", str(ticket), re.I)
    if wants_refund and "issue_refund" not in answers and isinstance(order, dict):
        arguments = {"order_number": order["number"], "amount_cents": order["total_cents"]}
        return ModelResponse(parts=[ToolCallPart("issue_refund", arguments)])
    outcome = (
        answers["issue_refund"].model_response_str() if "issue_refund" in answers else "No refund was needed."
    )
    return ModelResponse(parts=[TextPart(f"Thank you for writing to us. {outcome}\n\nThe shop")])


shop_agent = Agent(
    FunctionModel(_scripted, model_name="fake-1"), name="shop_assistant", instructions=INSTRUCTIONS
)


@shop_agent.tool_plain
def look_up_order(order_number: str) -> dict:
    """Look up a shop order by its number (like A-1001)."""
    order = Order.objects.filter(number=order_number).first()
    if order is None:
        raise ModelRetry(f"There is no order {order_number}; check the number.")
    return order.as_dict()


@shop_agent.tool
def issue_refund(ctx: RunContext, order_number: str, amount_cents: int) -> str:
    """Refund money to the customer of an order through the payment API."""
    if amount_cents > REVIEW_ABOVE_CENTS and not ctx.tool_call_approved:
        raise ApprovalRequired({"reason": f"refunds above ${REVIEW_ABOVE_CENTS / 100:.2f} need a person"})
    # The step's idempotency key: a retried or resumed refund is paid once.
    receipt = payments.refund(order_number, amount_cents, idempotency_key=idempotency_key())
    order = Order.objects.get(number=order_number)
    order.mark_refunded(amount_cents, receipt["reference"])
    return f"Refunded ${amount_cents / 100:,.2f} for order {order_number} (reference {receipt['reference']})."


durable_shop_agent = DurableAgent(
    shop_agent,
    tools={
        # The payment API times out now and then: try again, with the same idempotency key.
        "issue_refund": ToolOptions(RetryPolicy(max_attempts=5, initial_interval=1.0, max_interval=30.0), 20),
    },
)


def answer(ctx, data: dict) -> dict:
    result = durable_shop_agent.run_sync(ctx, data["ticket"])
    return {"reply": result.output, "model_requests": result.usage.requests}
