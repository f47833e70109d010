"""A small local corpus for the research agent, and a plain keyword search over it."""

from __future__ import annotations

import re

DOCUMENTS: dict[str, dict[str, str]] = {
    "durable-execution": {
        "title": "Durable execution in one page",
        "text": (
            "Durable execution saves the output of every step of a workflow in a database. "
            "When a worker crashes, the workflow is replayed from its checkpoints: completed steps "
            "return their recorded outputs instead of running again, and execution continues at the "
            "first step without a checkpoint. Workflow code must therefore be deterministic between steps."
        ),
    },
    "idempotency-keys": {
        "title": "Idempotency keys for payment APIs",
        "text": (
            "An idempotency key lets a client retry a request safely. Payment providers store the key "
            "with the result of the first request; a retry with the same key returns that result and "
            "moves no money twice. A key must stay the same across retries and crash recoveries of the "
            "same step, and change only when an operator deliberately asks for the effect again."
        ),
    },
    "leases-heartbeats": {
        "title": "Leases and heartbeats",
        "text": (
            "A worker that executes a run holds a lease on it, kept alive by a heartbeat that the worker "
            "process writes every half second. When the heartbeat stops for longer than the lease timeout, "
            "a sweep treats the worker as dead and dispatches its runs again, so a machine that loses power "
            "is recovered within a few seconds."
        ),
    },
    "retries-backoff": {
        "title": "Retries with exponential backoff",
        "text": (
            "A failed step is attempted again after a delay that doubles with every attempt, capped at a "
            "maximum interval and spread by random jitter so that many runs failing together do not retry "
            "in lockstep. Rate limits and timeouts are worth retrying; an authentication error is not, "
            "because the same request will be refused again."
        ),
    },
    "llm-costs": {
        "title": "Counting tokens and cost of LLM calls",
        "text": (
            "Model providers bill per input token and per output token, at prices that differ by model. "
            "Recording the tokens of every call with its model gives an estimated cost per step, per run "
            "and per workflow. Failed attempts that reached the model cost money too, which is why a "
            "replayed call must not call the model again."
        ),
    },
    "human-approval": {
        "title": "Human approval with deadlines",
        "text": (
            "An agent that prepares a risky action can wait for a person to approve it. The wait must not "
            "hold a worker: the run is parked in the database with a deadline. If nobody decides in time, "
            "the request is escalated to someone else, and the agent acts only on an explicit approval."
        ),
    },
    "celery-brokers": {
        "title": "Celery brokers as doorbells",
        "text": (
            "Celery delivers task messages through a broker such as Redis or RabbitMQ. When the database is "
            "the source of truth, a message only says which run to look at: a lost message delays the run "
            "until a sweep sends another, and a duplicate message finds nothing to claim."
        ),
    },
    "agent-loops": {
        "title": "Agent loops and tool calls",
        "text": (
            "An agent loop asks the model what to do next, runs the tools it asks for, and feeds the results "
            "back until the model gives a final answer or a step budget runs out. Because the number of "
            "calls is decided at run time, each model call and each tool call should be its own "
            "checkpointed step."
        ),
    },
    "sqlite-wal": {
        "title": "SQLite in WAL mode",
        "text": (
            "SQLite's write-ahead log lets readers continue while one writer commits. With a busy timeout, "
            "concurrent writers wait for the lock instead of failing, which makes SQLite a sensible embedded "
            "default for development and small deployments."
        ),
    },
    "refund-policy": {
        "title": "Refund policy of the demo shop",
        "text": (
            "Orders that arrive damaged or never arrive are refunded in full. Refunds above two hundred "
            "dollars need a supervisor's approval. A refund is paid once per order, and the order record is "
            "updated with the payment reference so support can answer follow-up questions."
        ),
    },
}

_STOPWORDS = """
    a an and are as at be by can do does for from how i in is it its of on or so that the their this
    to what when where which who why will with without you your
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and len(w) > 2]


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def search(query: str, limit: int = 5) -> list[dict]:
    """Documents sharing words with the query, best first, with a short snippet."""
    terms = {_stem(w) for w in words(query)}
    hits = []
    for doc_id, doc in DOCUMENTS.items():
        doc_terms = [_stem(w) for w in words(doc["title"] + " " + doc["text"])]
        score = sum(doc_terms.count(term) for term in terms) + 2 * sum(
            term in {_stem(w) for w in words(doc["title"])} for term in terms
        )
        if score:
            hits.append({"id": doc_id, "title": doc["title"], "score": score, "snippet": doc["text"][:120]})
    hits.sort(key=lambda hit: (-hit["score"], hit["id"]))
    return hits[:limit]


def best_sentence(doc_id: str, query: str) -> str:
    """The sentence of a document that shares the most words with the query."""
    terms = {_stem(w) for w in words(query)}
    sentences = re.split(r"(?<=\.)\s+", DOCUMENTS[doc_id]["text"])
    return max(sentences, key=lambda s: (sum(_stem(w) in terms for w in words(s)), -sentences.index(s)))
