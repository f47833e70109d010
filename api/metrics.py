"""/metrics in the Prometheus text format, read from the database on scrape.

Counters come from running totals (api/tallies.py): each scrape adds up only the
rows written since the totals were last brought up to date, so its cost does not
grow with the tables, and pruning old runs never lowers a counter. Gauges (runs by
status, live workers) are counts of what is stored now. A scrape within
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
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from api import tallies
from api.tallies import BUCKETS, TOKEN_KEYS
from runs.models import Run, Status, WorkerProcess
from steps.models import CheckpointStatus

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


class DatabaseCollector:
    """Reads the current numbers from the database; one instance per scrape."""

    def collect(self):
        counts = tallies.current()
        yield from self.runs()
        yield from self.steps(counts["checkpoints"])
        yield from self.failed_attempts(counts["attempts"])
        yield from self.recoveries(counts["recoveries"])
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

    def steps(self, counts: tallies.Counts):
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
        for (workflow, step, status), sums in sorted(counts.items()):
            key = (workflow, step)
            for token_key in TOKEN_KEYS:
                totals[token_key][key] += sums.get(token_key, 0)
            if status == CheckpointStatus.FAILED:
                failed.add_metric(list(key), sums["n"])
                continue
            completed.add_metric(list(key), sums["n"])
            cumulative = [(floatToGoString(bound), sums[f"le_{i}"]) for i, bound in enumerate(BUCKETS)]
            durations.add_metric(list(key), [*cumulative, ("+Inf", sums["n"])], sums.get("seconds", 0.0))
        for token_key, family in usage.items():
            for key, value in totals[token_key].items():
                family.add_metric(list(key), value)
        yield from (completed, failed, durations, *usage.values())

    def failed_attempts(self, counts: tallies.Counts):
        family = CounterMetricFamily(
            "durable_step_attempts_failed",
            "Failed attempts of steps (each retry counts).",
            labels=["workflow", "step"],
        )
        for (workflow, name), sums in sorted(counts.items()):
            family.add_metric([workflow, name], sums["n"])
        yield family

    def recoveries(self, counts: tallies.Counts):
        family = CounterMetricFamily(
            "durable_recoveries",
            "Runs recovered after their worker was lost, by what became of them (pending: dispatched "
            "again; dead: dead-lettered).",
            labels=["outcome"],
        )
        dead_letters = 0
        for (outcome,), sums in sorted(counts.items(), key=lambda item: str(item[0])):
            family.add_metric([str(outcome or "")], sums["n"])
            dead_letters += sums["n"] if outcome == Status.DEAD else 0
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
