"""Three demo agents that run offline on the fake model (or on a real one, given a key).

- `refund_agent`: triages a support ticket with the model, looks up the order,
  refunds it through the simulated payment API (which times out at random and
  deduplicates by idempotency key), records the refund, drafts a reply.
- `research_agent`: a model/tool loop over a local corpus (search, read, take
  notes, answer) whose number of steps depends on the question.
- `approval_agent`: prepares a refund, waits for a human's `approval` signal until
  a deadline, escalates when nobody answers, then acts on the decision.
- `shop_assistant`: a Pydantic AI agent (agentkit/pydantic_ai_demo.py) made durable by
  agentkit.integrations.pydantic_ai; a large refund waits for a person's approval.

Listed in DURABLE_WORKFLOW_MODULES by default, so workers know these workflows.
The fake model's replies for their system prompts are registered here too.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.utils import timezone

from agentkit import corpus, fake, faults, llm, payments
from agentkit.loop import run_agent
from agentkit.models import Note, Notification, Order, OrderStatus
from agentkit.tools import call as call_tool
from agentkit.tools import idempotency_key, tool
from runs.workflow import NonRetryableError, RetryPolicy, current_step, workflow

WORKFLOWS = ("refund_agent", "research_agent", "approval_agent", "shop_assistant")
faults.FAULTABLE.update(WORKFLOWS)

ORDER_NUMBER = r"[A-Z]-\d{4}"

DEMO_ORDERS = [
    # number, customer, email, item, total in cents
    ("A-1001", "Ada Lovelace", "ada@example.com", "Analytical engine gears (set of 12)", 4_999),
    ("A-1002", "Grace Hopper", "grace@example.com", "Nanosecond wire, 30 cm", 1_250),
    ("A-1003", "Alan Turing", "alan@example.com", "Bombe rotor replacement", 32_000),
    ("A-1004", "Edsger Dijkstra", "edsger@example.com", "Fountain pen, fine nib", 8_900),
    ("A-1005", "Barbara Liskov", "barbara@example.com", "CLU language manual, first edition", 15_500),
    ("A-1006", "Katherine Johnson", "katherine@example.com", "Slide rule, 25 cm", 4_200),
]


def ensure_demo_orders() -> int:
    """Create the demo shop's orders that do not exist yet; returns how many were created."""
    created = 0
    for number, customer, email, item, cents in DEMO_ORDERS:
        _, new = Order.objects.get_or_create(
            number=number, defaults={"customer": customer, "email": email, "item": item, "total_cents": cents}
        )
        created += new
    return created


def dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


# --- tools ------------------------------------------------------------------------

ORDER_INPUT = {
    "type": "object",
    "properties": {"order_number": {"type": "string", "pattern": f"^{ORDER_NUMBER}$"}},
    "required": ["order_number"],
    "additionalProperties": False,
}


@tool(schema=ORDER_INPUT)
def look_up_order(order_number: str) -> dict:
    """Look up a shop order by its number (like A-1001)."""
    order = Order.objects.filter(number=order_number).first()
    if order is None:
        raise NonRetryableError(f"no order {order_number}")
    return order.as_dict()


@tool(
    schema={
        "type": "object",
        "properties": {
            "order_number": {"type": "string", "pattern": f"^{ORDER_NUMBER}$"},
            "amount_cents": {"type": "integer", "minimum": 1},
            "reason": {"type": "string", "maxLength": 500},
        },
        "required": ["order_number", "amount_cents"],
        "additionalProperties": False,
    },
    # The payment API times out now and then: try again, with the same idempotency key.
    retry=RetryPolicy(max_attempts=5, initial_interval=1.0, backoff_coefficient=2.0, max_interval=30.0),
    timeout=20,
)
def issue_refund(order_number: str, amount_cents: int, reason: str = "") -> dict:
    """Refund money to the customer of an order through the payment API."""
    return payments.refund(order_number, amount_cents, idempotency_key=idempotency_key())


@tool(
    schema={
        "type": "object",
        "properties": {
            "order_number": {"type": "string", "pattern": f"^{ORDER_NUMBER}$"},
            "amount_cents": {"type": "integer", "minimum": 1},
            "reference": {"type": "string", "minLength": 1},
        },
        "required": ["order_number", "amount_cents", "reference"],
        "additionalProperties": False,
    }
)
def mark_order_refunded(order_number: str, amount_cents: int, reference: str) -> dict:
    """Record a refund on the order."""
    order = Order.objects.get(number=order_number)
    changed = order.mark_refunded(amount_cents, reference)
    order.refresh_from_db()
    return {**order.as_dict(), "changed": changed}


@tool(
    schema={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 500},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
)
def search_corpus(query: str, limit: int = 5) -> list[dict]:
    """Search the local document corpus; returns document ids, titles and snippets, best first."""
    return corpus.search(query, limit)


@tool(
    schema={
        "type": "object",
        "properties": {"id": {"type": "string", "enum": sorted(corpus.DOCUMENTS)}},
        "required": ["id"],
        "additionalProperties": False,
    }
)
def read_document(id: str) -> dict:
    """Read one document of the corpus in full."""
    return {"id": id, **corpus.DOCUMENTS[id]}


@tool(
    schema={
        "type": "object",
        "properties": {
            "source": {"type": "string", "maxLength": 100},
            "text": {"type": "string", "minLength": 1, "maxLength": 2000},
        },
        "required": ["source", "text"],
        "additionalProperties": False,
    }
)
def take_note(source: str, text: str) -> dict:
    """Write down one fact and the document it came from."""
    info = current_step()
    note, _ = Note.objects.get_or_create(
        idempotency_key=info.idempotency_key, defaults={"run_id": info.run_id, "source": source, "text": text}
    )
    return {"note": note.pk, "source": note.source, "text": note.text}


@tool(
    schema={
        "type": "object",
        "properties": {
            "to": {"type": "string", "minLength": 1},
            "subject": {"type": "string", "minLength": 1, "maxLength": 200},
            "body": {"type": "string"},
        },
        "required": ["to", "subject"],
        "additionalProperties": False,
    }
)
def escalate(to: str, subject: str, body: str = "") -> dict:
    """Send a decision that is overdue to someone else."""
    info = current_step()
    sent, _ = Notification.objects.get_or_create(
        idempotency_key=info.idempotency_key,
        defaults={"run_id": info.run_id, "recipient": to, "subject": subject, "body": body},
    )
    return {"notification": sent.pk, "to": sent.recipient, "subject": sent.subject}


# --- the refund agent ---------------------------------------------------------------

TRIAGE_PROMPT = (
    "You triage support tickets for a small online shop. Reply with a JSON object and nothing else: "
    '{"intent": "refund" | "question" | "other", "order": "<order number like A-1001, or null>", '
    '"reason": "<one sentence>"}.'
)
REPLY_PROMPT = (
    "You write short, friendly replies to customers of a small online shop. You are given the "
    "customer's name, their ticket and what was done. Write the reply only, signed 'The shop'."
)


@workflow("refund_agent")
def refund_agent(ctx, data):
    ticket = data["ticket"]
    triage = llm.chat(ctx, [llm.system(TRIAGE_PROMPT), llm.user(ticket)], json=True, label="triage")["data"]
    if triage.get("intent") != "refund" or not triage.get("order"):
        reply = _draft_reply(ctx, data.get("customer") or "there", ticket, "No refund was needed.")
        return {"intent": triage.get("intent"), "refunded": False, "reply": reply}

    order = call_tool(ctx, "look_up_order", {"order_number": triage["order"]})
    if order["status"] == OrderStatus.REFUNDED:
        done = f"Order {order['number']} was already refunded (reference {order['refund_reference']})."
        reply = _draft_reply(ctx, order["customer"], ticket, done)
        return {"intent": "refund", "refunded": False, "order": order["number"], "reply": reply}

    number, cents = order["number"], order["total_cents"]
    reason = triage.get("reason") or ""
    receipt = call_tool(
        ctx, "issue_refund", {"order_number": number, "amount_cents": cents, "reason": reason}
    )
    call_tool(
        ctx,
        "mark_order_refunded",
        {"order_number": number, "amount_cents": cents, "reference": receipt["reference"]},
    )
    done = f"Refunded {dollars(cents)} for order {number} (reference {receipt['reference']})."
    reply = _draft_reply(ctx, order["customer"], ticket, done)
    return {"intent": "refund", "refunded": True, "order": number, "receipt": receipt, "reply": reply}


def _draft_reply(ctx, customer: str, ticket: str, outcome: str) -> str:
    facts = f"Customer: {customer}\nTicket: {ticket}\nOutcome: {outcome}"
    return llm.chat(ctx, [llm.system(REPLY_PROMPT), llm.user(facts)], label="draft_reply")["content"]


@fake.responder(TRIAGE_PROMPT)
def _fake_triage(request) -> str:
    ticket = _last_user(request)
    order = re.search(rf"\b{ORDER_NUMBER}\b", ticket)
    wants_money = re.search(r"refund|money back|broken|damaged|never arrived|return", ticket, re.I)
    intent = "refund" if wants_money else ("question" if "?" in ticket else "other")
    reason = "The customer reports a problem with the order." if wants_money else "A general enquiry."
    return json.dumps({"intent": intent, "order": order.group(0) if order else None, "reason": reason})


@fake.responder(REPLY_PROMPT)
def _fake_reply(request) -> str:
    facts = dict(line.split(": ", 1) for line in _last_user(request).splitlines() if ": " in line)
    name = facts.get("Customer", "there").split()[0]
    return (
        f"Hi {name},\n\nThank you for getting in touch. {facts.get('Outcome', '')}\n\n"
        "If there is anything else we can do, just reply to this message.\n\nThe shop"
    )


# --- the research agent -------------------------------------------------------------

RESEARCH_PROMPT = (
    "You are a research assistant with a small document corpus. Search it with search_corpus, read "
    "the relevant documents with read_document, record one fact from each with take_note, then answer "
    "the question in a few sentences, citing document ids in square brackets."
)
RESEARCH_TOOLS = ["search_corpus", "read_document", "take_note"]


@workflow("research_agent")
def research_agent(ctx, data):
    result = run_agent(
        ctx,
        system=RESEARCH_PROMPT,
        user=data["question"],
        tools=RESEARCH_TOOLS,
        max_steps=data.get("max_steps", 40),
        label="research",
    )
    return {
        "answer": result["answer"],
        "stopped": result["stopped"],
        "model_calls": result["model_calls"],
        "tool_calls": result["tool_calls"],
    }


@fake.responder(RESEARCH_PROMPT)
def _fake_research(request) -> dict | str:
    question = next(m["content"] for m in request["messages"] if m["role"] == "user")
    done = _tool_results(request["messages"])
    searches = [result for name, _, result in done if name == "search_corpus"]
    if not searches:
        return _call("search_corpus", query=question, limit=5)
    hits = searches[-1] if isinstance(searches[-1], list) else []
    # Read what scores at least half as well as the best hit: the count depends on the question.
    targets = [hit["id"] for hit in hits if hit["score"] * 2 >= hits[0]["score"]][:4]
    read = {args.get("id") for name, args, _ in done if name == "read_document"}
    notes = [args for name, args, _ in done if name == "take_note"]
    for doc_id in targets:
        if doc_id not in read:
            return _call("read_document", id=doc_id)
        if doc_id not in {note.get("source") for note in notes}:
            return _call("take_note", source=doc_id, text=corpus.best_sentence(doc_id, question))
    if not notes:
        return "I found nothing in the corpus about that."
    return " ".join(f"{note['text']} [{note['source']}]" for note in notes)


# --- the approval agent -------------------------------------------------------------

PROPOSAL_PROMPT = (
    "You prepare actions that a person must approve. Given a requested refund and the order, reply "
    'with a JSON object and nothing else: {"summary": "<one or two sentences for the approver>", '
    '"risk": "low" | "high"}.'
)
TIMED_OUT = {"timed_out": True}


@workflow("approval_agent")
def approval_agent(ctx, data):
    order = call_tool(ctx, "look_up_order", {"order_number": data["order"]})
    amount = data.get("amount_cents") or order["total_cents"]
    request = {"order": order, "amount_cents": amount, "reason": data.get("reason", "")}
    proposal = llm.chat(
        ctx, [llm.system(PROPOSAL_PROMPT), llm.user(json.dumps(request))], json=True, label="prepare"
    )["data"]

    decision = ctx.wait_for_signal(
        "approval", timeout=timedelta(seconds=data.get("deadline_seconds", 3600)), default=TIMED_OUT
    )
    escalated = None
    if decision == TIMED_OUT:
        escalated = call_tool(
            ctx,
            "escalate",
            {
                "to": data.get("escalate_to", "support-lead"),
                "subject": f"Overdue approval: refund {dollars(amount)} for order {order['number']}",
                "body": proposal.get("summary", ""),
            },
        )
        late = {"approved": False, "note": "nobody decided before the escalation deadline"}
        deadline = timedelta(seconds=data.get("escalation_deadline_seconds", 86400))
        decision = ctx.wait_for_signal("approval", timeout=deadline, default=late)
    decision = decision if isinstance(decision, dict) else {"approved": False, "note": "unreadable decision"}
    outcome = {"proposal": proposal, "escalated": escalated, "decision": decision}
    if not decision.get("approved"):
        return {**outcome, "outcome": "rejected"}
    receipt = call_tool(
        ctx, "issue_refund", {"order_number": order["number"], "amount_cents": amount, "reason": "approved"}
    )
    call_tool(
        ctx,
        "mark_order_refunded",
        {"order_number": order["number"], "amount_cents": amount, "reference": receipt["reference"]},
    )
    return {**outcome, "outcome": "refunded", "receipt": receipt}


@fake.responder(PROPOSAL_PROMPT)
def _fake_proposal(request) -> str:
    facts = json.loads(_last_user(request))
    order, amount = facts["order"], facts["amount_cents"]
    summary = (
        f"Refund {dollars(amount)} to {order['customer']} for order {order['number']} ({order['item']})"
        + (f": {facts['reason']}" if facts.get("reason") else ".")
    )
    return json.dumps({"summary": summary, "risk": "high" if amount > 20_000 else "low"})


# --- the Pydantic AI agent ------------------------------------------------------------


@workflow("shop_assistant")
def shop_assistant(ctx, data):
    # Imported here: only the workers that run it load Pydantic AI.
    from agentkit import pydantic_ai_demo

    return pydantic_ai_demo.answer(ctx, data)


# --- helpers for the fake model -------------------------------------------------------


def _last_user(request) -> str:
    return next((m["content"] or "" for m in reversed(request["messages"]) if m["role"] == "user"), "")


def _call(name: str, **arguments) -> dict:
    return {"content": None, "tool_calls": [{"name": name, "arguments": arguments}]}


def _tool_results(messages: list[dict]) -> list[tuple[str, dict, object]]:
    """(tool name, arguments, parsed result) for every answered tool call, in order."""
    calls = {
        call["id"]: call for m in messages if m["role"] == "assistant" for call in m.get("tool_calls") or []
    }
    done = []
    for m in messages:
        if m["role"] == "tool" and m.get("tool_call_id") in calls:
            call = calls[m["tool_call_id"]]
            try:
                result = json.loads(m["content"])
            except (TypeError, ValueError):
                result = m["content"]
            done.append((call["name"], call["arguments"], result))
    return done


def outage(order_number: str, seconds: float) -> None:
    """Fault injection: the payment gateway times out for this order for a while."""
    Order.objects.filter(number=order_number).update(
        gateway_down_until=timezone.now() + timedelta(seconds=seconds)
    )
