"""/metrics in the Prometheus text format, read from the database on scrape.

A few aggregate queries answer a scrape (one pass over checkpoints, one over
attempts, small ones over runs, audit entries and worker processes); no row is
looked at in Python. Totals are counts of rows, so pruning old runs lowers them:
Prometheus treats that as a counter reset. A scrape within
DURABLE_METRICS_CACHE_SECONDS of the previous one is answered from memory.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import NotSupportedError
from django.db.models import Count, DurationField, ExpressionWrapper, F, FloatField, Func, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from runs.models import AuditEntry, Run, Status, WorkerProcess
from steps.models import Attempt, Checkpoint, CheckpointStatus

# Step durations, in seconds: tool calls take milliseconds, model calls seconds to minutes.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
TOKEN_KEYS = ("input_tokens", "output_tokens", "cost_usd")


# --- access ----------------------------------------------------------------------------


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read metrics, else the response that says why not."""
    if address_allowed(request.META.get("REMOTE_ADDR", "")):
        return None
    token = settings.DURABLE_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = HttpResponse("A valid bearer token is needed.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if settings.DURABLE_METRICS_ALLOWED_IPS:
        return HttpResponse("This address may not read metrics.\n", status=403, content_type="text/plain")
    return HttpResponse(
        "Metrics are off: set DURABLE_METRICS_TOKEN or DURABLE_METRICS_ALLOWED_IPS.\n",
        status=403,
        content_type="text/plain",
    )


def address_allowed(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in settings.DURABLE_METRICS_ALLOWED_IPS)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    return HttpResponse(cached_exposition(), content_type=CONTENT_TYPE_LATEST)


_cache: dict = {"at": 0.0, "body": b""}
_cache_lock = threading.Lock()


def cached_exposition() -> bytes:
    with _cache_lock:
        ttl = settings.DURABLE_METRICS_CACHE_SECONDS
        if ttl and time.monotonic() - _cache["at"] < ttl:
            return _cache["body"]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector())
        body = generate_latest(registry)
        _cache.update(at=time.monotonic(), body=body)
        return body


# --- queries ---------------------------------------------------------------------------


class JSONNumber(Func):
    """The number under `key` of a JSON column; NULL when the key is missing or not a number."""

    output_field = FloatField()

    def __init__(self, column: str, key: str):
        super().__init__(F(column))
        self.key = key

    def as_sqlite(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        path = f'$."{self.key}"'
        sql = f"CASE WHEN json_type({column}, %s) IN ('integer', 'real') THEN json_extract({column}, %s) END"
        return sql, (*params, path, *params, path)

    def as_postgresql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        sql = (
            f"CASE WHEN jsonb_typeof({column} -> %s) = 'number' THEN ({column} ->> %s)::double precision END"
        )
        return sql, (*params, self.key, *params, self.key)

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("JSONNumber supports SQLite and PostgreSQL")


def step_rows():
    """Checkpoints by workflow, step and status: counts, duration buckets, token sums."""
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {
        f"le_{index}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
        for index, bound in enumerate(BUCKETS)
    }
    tokens = {key: Sum(JSONNumber("meta", key)) for key in TOKEN_KEYS}
    return (
        Checkpoint.objects.order_by()
        .alias(duration=duration)
        .values("run__workflow", "name", "status")
        .annotate(n=Count("pk"), seconds=Sum("duration"), **buckets, **tokens)
    )


class DatabaseCollector:
    """Reads the current numbers from the database; one instance per scrape."""

    def collect(self):
        yield from self.runs()
        yield from self.steps()
        yield from self.failed_attempts()
        yield from self.recoveries()
        yield from self.workers()

    def runs(self):
        family = GaugeMetricFamily(
            "durable_runs", "Runs by status and workflow.", labels=["status", "workflow"]
        )
        dead = 0
        rows = Run.objects.order_by().values_list("status", "workflow").annotate(n=Count("pk"))
        for status, workflow, n in rows:
            family.add_metric([status, workflow], n)
            dead += n if status == Status.DEAD else 0
        yield family
        yield GaugeMetricFamily(
            "durable_dead_letter_runs", "Runs dead-lettered and waiting for an operator.", value=dead
        )

    def steps(self):
        labels = ["workflow", "step"]
        completed = CounterMetricFamily(
            "durable_steps_completed",
            "Steps that returned (checkpoints, superseded ones too).",
            labels=labels,
        )
        failed = CounterMetricFamily(
            "durable_steps_failed",
            "Steps that failed for good (retries exhausted or non-retryable).",
            labels=labels,
        )
        durations = HistogramMetricFamily(
            "durable_step_duration_seconds", "Duration of the successful attempt of each step.", labels=labels
        )
        names = {
            "input_tokens": ("durable_llm_input_tokens", "LLM input tokens reported by steps."),
            "output_tokens": ("durable_llm_output_tokens", "LLM output tokens reported by steps."),
            "cost_usd": ("durable_llm_cost_usd", "Estimated LLM cost in US dollars reported by steps."),
        }
        usage = {key: CounterMetricFamily(name, text, labels=labels) for key, (name, text) in names.items()}
        totals: dict[str, dict] = defaultdict(lambda: defaultdict(float))
        for row in step_rows():
            key = (row["run__workflow"], row["name"])
            for token_key in TOKEN_KEYS:
                totals[token_key][key] += row[token_key] or 0
            if row["status"] == CheckpointStatus.FAILED:
                failed.add_metric(list(key), row["n"])
                continue
            completed.add_metric(list(key), row["n"])
            cumulative = [(floatToGoString(bound), row[f"le_{i}"]) for i, bound in enumerate(BUCKETS)]
            seconds = row["seconds"].total_seconds() if row["seconds"] is not None else 0.0
            durations.add_metric(list(key), [*cumulative, ("+Inf", row["n"])], seconds)
        for token_key, family in usage.items():
            for key, value in totals[token_key].items():
                family.add_metric(list(key), value)
        yield from (completed, failed, durations, *usage.values())

    def failed_attempts(self):
        family = CounterMetricFamily(
            "durable_step_attempts_failed",
            "Failed attempts of steps (each retry counts).",
            labels=["workflow", "step"],
        )
        rows = Attempt.objects.order_by().values_list("run__workflow", "name").annotate(n=Count("pk"))
        for workflow, name, n in rows:
            family.add_metric([workflow, name], n)
        yield family

    def recoveries(self):
        family = CounterMetricFamily(
            "durable_recoveries",
            "Runs recovered after their worker was lost, by what became of them (pending: dispatched "
            "again; dead: dead-lettered).",
            labels=["outcome"],
        )
        dead_letters = 0
        rows = (
            AuditEntry.objects.filter(action="recover")
            .order_by()
            .values_list("details__outcome")
            .annotate(n=Count("pk"))
        )
        for outcome, n in rows:
            family.add_metric([str(outcome or "")], n)
            dead_letters += n if outcome == Status.DEAD else 0
        yield family
        yield CounterMetricFamily(
            "durable_dead_letters",
            "Runs dead-lettered after losing their worker too often.",
            value=dead_letters,
        )

    def workers(self):
        cutoff = timezone.now() - timedelta(seconds=settings.DURABLE_LEASE_TIMEOUT)
        alive = WorkerProcess.objects.filter(heartbeat_at__gte=cutoff).count()
        yield GaugeMetricFamily(
            "durable_worker_processes", "Worker processes whose heartbeat is current.", value=alive
        )
