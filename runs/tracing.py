"""Optional OpenTelemetry traces: one trace per run, a span per delivery and per step attempt.

Off unless the standard variables ask for it: OTEL_TRACES_EXPORTER (otlp, console), or an
OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); never with
OTEL_SDK_DISABLED=true, nor without opentelemetry-sdk. Off, every hook returns at once.
The exporter reads its own OTEL_EXPORTER_OTLP_* settings (http/protobuf), the resource
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, the batching OTEL_BSP_*.

A run's trace:
- Its trace id is the run's idempotency key (128 random bits): every process that executes
  the run, after a sleep, a retry's backoff, a crash or an operator's resume, and every
  parallel branch, adds to the same trace without passing anything along.
- `run <workflow>`, the root, is written once, at the first claim, spanning the run's queue
  time; its span id is derived from the key, so later spans name it as their parent. A child
  run's root links to its parent run's root.
- `execute <workflow>`: one delivery (claim to release), with its outcome.
- `step <name>`: one attempt of a step, failed attempts with an error status. A model call
  inside it is a `chat <model>` span with the GenAI semantic conventions' attributes
  (agentkit.llm), a tool's step is marked `execute_tool` (agentkit.tools).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery import signals

log = logging.getLogger(__name__)

SERVICE_NAME = "durable-runs"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one
SCOPE = "runs.tracing"

_lock = threading.RLock()  # configure() takes it again when the environment decides
_state: dict[str, Any] = {"decided": False, "tracer": None, "provider": None}
# The ids the next span started on this thread must take: the run's root span's.
_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "forced_ids", default=None
)


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _tracer():
    if not _state["decided"]:
        with _lock:
            if not _state["decided"]:
                _state["tracer"] = _from_environment() if wanted() else None
                _state["decided"] = True
    return _state["tracer"]


def enabled() -> bool:
    return _tracer() is not None


def _from_environment():
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but opentelemetry-sdk is not installed: no traces")
        return None
    exporters = exporters_from_environment()
    if not exporters:
        return None
    return configure(*(BatchSpanProcessor(exporter) for exporter in exporters))


def exporters_from_environment(environ: Mapping[str, str] = os.environ) -> list:
    """The span exporters OTEL_TRACES_EXPORTER names (otlp by default, as the SDK's)."""
    exporters = []
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL"
            )
            if protocol and protocol != "http/protobuf":
                log.warning("OTLP protocol %r is not installed; exporting over http/protobuf", protocol)
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http")
                continue
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name not in ("", "none"):
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (use otlp or console)", name)
    return exporters


def configure(*processors):
    """Trace into these span processors from now on; returns the tracer.

    Tests pass a SimpleSpanProcessor over the SDK's InMemorySpanExporter.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource, id_generator=_run_ids())
    for processor in processors:
        provider.add_span_processor(processor)
    with _lock:
        previous = _state["provider"]
        _state.update(decided=True, tracer=provider.get_tracer(SCOPE), provider=provider)
    if previous is not None:
        previous.shutdown()
    return _state["tracer"]


def reset() -> None:
    """Stop tracing into what `configure` set; the environment decides again on next use."""
    with _lock:
        provider = _state["provider"]
        _state.update(decided=False, tracer=None, provider=None)
    if provider is not None:
        provider.shutdown()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def flush(**_) -> None:
    """Export what is still batched: a pool process may end without running atexit hooks."""
    provider = _state["provider"]
    if provider is not None:
        provider.force_flush()


# --- ids: a run's trace without passing anything along --------------------------------------


def trace_id(run_key: str) -> int:
    try:
        value = int(run_key, 16) & (2**128 - 1)
    except ValueError:  # not hexadecimal: keys are uuid4().hex, but keep any key traceable
        value = int(hashlib.sha256(run_key.encode()).hexdigest()[:32], 16)
    return value or 1


def root_span_id(run_key: str) -> int:
    return int(hashlib.sha256(f"run {run_key}".encode()).hexdigest()[:16], 16) or 1


def root_context(run_key: str):
    """The run's root span, as a parent or a link for spans written anywhere later."""
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        trace_id(run_key), root_span_id(run_key), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


def _under_root(run_key: str):
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(root_context(run_key)))


def _run_ids():
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIds(RandomIdGenerator):
        """Random ids, except for a run's root span, whose ids follow from the run's key."""

        def generate_trace_id(self) -> int:
            forced = _forced_ids.get()
            return forced[0] if forced else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _forced_ids.get()
            return forced[1] if forced else super().generate_span_id()

    return RunIds()


def _nanoseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


# --- hooks ------------------------------------------------------------------------------------


def delivery(advance: Callable[..., str], run, *args) -> str:
    """`advance(run, *args)` inside the run's delivery span; the run's root span on its first claim."""
    tracer = _tracer()
    if tracer is None:
        return advance(run, *args)
    from opentelemetry.trace import Status, StatusCode

    key = run.idempotency_key
    if run.claims == 1:
        _write_root(tracer, run)
    attributes = {"durable.run.id": run.pk, "durable.workflow": run.workflow, "durable.run.claim": run.claims}
    with tracer.start_as_current_span(
        f"execute {run.workflow}", context=_under_root(key), attributes=attributes
    ) as span:
        outcome = advance(run, *args)
        span.set_attribute("durable.delivery.outcome", outcome)
        if outcome == "failed":
            span.set_status(Status(StatusCode.ERROR, "the run failed"))
        return outcome


def _write_root(tracer, run) -> None:
    from django.utils import timezone
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    links = []
    attributes = {"durable.run.id": run.pk, "durable.workflow": run.workflow}
    if run.parent_id:
        parent_key = (
            type(run).objects.filter(pk=run.parent_id).values_list("idempotency_key", flat=True).first()
        )
        attributes["durable.run.parent_id"] = run.parent_id
        if parent_key:
            links.append(Link(root_context(parent_key), {"durable.link": "parent run"}))
    forced = _forced_ids.set((trace_id(run.idempotency_key), root_span_id(run.idempotency_key)))
    try:
        span = tracer.start_span(
            f"run {run.workflow}",
            context=Context(),  # a root: no parent, whatever is current
            links=links,
            attributes=attributes,
            start_time=_nanoseconds(run.created_at),
        )
    finally:
        _forced_ids.reset(forced)
    span.end(end_time=_nanoseconds(timezone.now()))


def attempt(fn: Callable, info) -> Callable:
    """`fn` wrapped in a span for one attempt of the step `info` (runs.workflow.StepInfo).

    The parent is taken here, where the engine calls it: the step may run on a helper
    thread (a step's own timeout), which does not inherit the current span.
    """
    tracer = _tracer()
    if tracer is None:
        return fn
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode

    parent = context.get_current()
    run_key = info.idempotency_key.split("-", 1)[0]  # "<run key>-<epoch>-<position>[.<branch>]"
    if trace.get_current_span(parent).get_span_context().trace_id != trace_id(run_key):
        parent = _under_root(run_key)  # a parallel branch, executed outside any delivery
    attributes = {
        "durable.run.id": info.run_id,
        "durable.step.name": info.name,
        "durable.step.position": info.position,
        "durable.step.attempt": info.attempt,
        "durable.step.idempotency_key": info.idempotency_key,
    }

    def traced(*args, **kwargs):
        with tracer.start_as_current_span(
            f"step {info.name}", context=parent, attributes=attributes, record_exception=False
        ) as span:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:  # a timeout is one too: it interrupts as a BaseException
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    return traced


class _NoSpan:
    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass


@contextmanager
def span(name: str, attributes: Mapping[str, Any], *, client: bool = False) -> Iterator[Any]:
    """A span of its own inside the current one (a model call: `client=True`); a do-nothing
    object with `set_attributes` when tracing is off."""
    tracer = _tracer()
    if tracer is None:
        yield _NoSpan()
        return
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as current:
        yield current


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (a tool's step says which tool it runs)."""
    if _tracer() is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # OpenTelemetry refuses None values; leaving them out says "unknown".
    return {name: value for name, value in attributes.items() if value is not None}
