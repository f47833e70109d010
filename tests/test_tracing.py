"""OpenTelemetry traces of runs (runs.tracing), read from the SDK's in-memory exporter."""

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import time_machine
from django.utils import timezone
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentkit import fake, llm
from runs import tracing
from runs.models import Run, Status
from runs.recovery import sweep
from runs.workflow import RetryPolicy, StepInfo, step, workflow
from steps.models import Checkpoint
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)

FLAKY = {}


class PowerCut(BaseException):
    """Escapes everything, like the worker process dying."""


@step(retry=RetryPolicy(max_attempts=3, initial_interval=1, jitter=0))
def tracing_flaky(n: int) -> int:
    if FLAKY.get("failures", 0) > 0:
        FLAKY["failures"] -= 1
        raise RuntimeError("the service hiccuped")
    if FLAKY.pop("power_cut", False):
        raise PowerCut("the worker died in the step")
    return n


def tracing_branch(n: int) -> int:
    return n * 2


@workflow("tracing_child")
def tracing_child(ctx, data):
    return llm.chat(ctx, [llm.system("Be brief."), llm.user(data["question"])], label="ask")["content"]


@workflow("tracing_parent")
def tracing_parent(ctx, data):
    first = ctx.step(tracing_flaky, 1)
    answer = ctx.child("tracing_child", {"question": "Traced?"})
    return {"first": first, "answer": answer}


@workflow("tracing_fanout")
def tracing_fanout(ctx, data):
    return ctx.map(tracing_branch, [1, 2])


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_FAKE_LATENCY = 0
    fake.reset()
    FLAKY.clear()


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.reset()


def settle(doorbells, rounds=5):
    start = timezone.now()
    doorbells.drain()
    for round in range(1, rounds + 1):
        with time_machine.travel(start + timedelta(minutes=round), tick=False):
            sweep()
            doorbells.drain()


def named(exporter, name):
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_a_run_is_one_trace_of_deliveries_and_step_attempts_and_its_child_links_to_it(doorbells, spans):
    FLAKY["failures"] = 1
    run = Run.objects.start("tracing_parent", {})
    settle(doorbells)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    child = run.children.get()
    trace_id = tracing.trace_id(run.idempotency_key)

    (root,) = named(spans, "run tracing_parent")
    assert (root.context.trace_id, root.context.span_id) == (
        trace_id,
        tracing.root_span_id(run.idempotency_key),
    )
    assert root.parent is None
    assert root.attributes["durable.run.id"] == run.pk

    # Failed attempt, retry after the backoff, wait for the child, finish: one delivery each.
    deliveries = named(spans, "execute tracing_parent")
    assert len(deliveries) == 3
    assert {d.context.trace_id for d in deliveries} == {trace_id}
    assert {d.parent.span_id for d in deliveries} == {root.context.span_id}
    assert [d.attributes["durable.delivery.outcome"] for d in deliveries] == [
        "ok/retry",
        "ok/child",
        "succeeded",
    ]

    first, second = named(spans, "step tracing_flaky")
    assert [a.attributes["durable.step.attempt"] for a in (first, second)] == [1, 2]
    assert first.status.status_code == StatusCode.ERROR
    assert first.events[0].attributes["exception.type"] == "RuntimeError"
    assert second.status.status_code == StatusCode.UNSET
    assert first.parent.span_id == deliveries[0].context.span_id
    assert second.parent.span_id == deliveries[1].context.span_id
    assert second.attributes["durable.step.idempotency_key"] == run.step_idempotency_key(0)

    # The child is a trace of its own whose root links to the parent run's root.
    (child_root,) = named(spans, "run tracing_child")
    assert child_root.context.trace_id == tracing.trace_id(child.idempotency_key) != trace_id
    (link,) = child_root.links
    assert (link.context.trace_id, link.context.span_id) == (trace_id, root.context.span_id)
    assert child_root.attributes["durable.run.parent_id"] == run.pk


def test_a_model_call_is_a_client_span_with_the_genai_attributes(doorbells, spans):
    run = Run.objects.start("tracing_child", {"question": "Traced?"})
    assert doorbells.drain() == ["succeeded"]
    meta = Checkpoint.objects.get(run=run, position=0).meta

    (chat,) = named(spans, "chat fake-1")
    (attempt,) = named(spans, "step llm:ask")
    assert chat.kind == SpanKind.CLIENT
    assert chat.parent.span_id == attempt.context.span_id
    assert chat.context.trace_id == tracing.trace_id(run.idempotency_key)
    attributes = dict(chat.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "fake"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "fake-1"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == meta["input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == meta["output_tokens"] > 0
    assert attributes["gen_ai.response.id"] == meta["response"]["id"]


def test_a_failed_model_call_says_why(doorbells, spans):
    fake.fail_next("rate_limit")
    run = Run.objects.start("tracing_child", {"question": "Traced?"})
    settle(doorbells)
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED

    failed, answered = named(spans, "chat fake-1")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "RateLimited"
    assert "error.type" not in answered.attributes
    assert [a.status.status_code for a in named(spans, "step llm:ask")] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]


def test_a_resume_after_a_crash_adds_to_the_same_trace(doorbells, spans):
    FLAKY["power_cut"] = True
    run = Run.objects.start("tracing_parent", {})
    with pytest.raises(PowerCut):
        doorbells.drain()
    lapse_leases()
    assert sweep().recovered == 1
    settle(doorbells)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.recovery_count == 1

    assert len(named(spans, "run tracing_parent")) == 1  # written at the first claim only
    # (A real crash exports nothing of the delivery it ends; here the power cut unwinds it.)
    crashed, *resumed = named(spans, "execute tracing_parent")
    assert "durable.delivery.outcome" not in crashed.attributes
    (cut,) = [s for s in named(spans, "step tracing_flaky") if s.status.status_code == StatusCode.ERROR]
    assert cut.events[0].attributes["exception.type"].endswith("PowerCut")
    assert [d.attributes["durable.run.claim"] for d in resumed] == [2, 3]
    root_id = tracing.root_span_id(run.idempotency_key)
    assert {d.parent.span_id for d in [crashed, *resumed]} == {root_id}
    assert {d.context.trace_id for d in [crashed, *resumed]} == {tracing.trace_id(run.idempotency_key)}


def test_parallel_branches_are_attempt_spans_under_the_runs_root(doorbells, spans):
    run = Run.objects.start("tracing_fanout", {})
    doorbells.drain_all()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.output == [2, 4]

    branches = named(spans, "step tracing_branch")
    assert len(branches) == 2
    assert {b.parent.span_id for b in branches} == {tracing.root_span_id(run.idempotency_key)}
    assert {b.context.trace_id for b in branches} == {tracing.trace_id(run.idempotency_key)}


def test_it_is_off_without_the_otel_variables(doorbells, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing.reset()
    assert not tracing.enabled()
    info = StepInfo(run_id=1, name="x", position=0, attempt=1, idempotency_key="ab-0-0")
    assert tracing.attempt(tracing_branch, info) is tracing_branch
    Run.objects.start("tracing_child", {"question": "Untraced?"})
    assert doorbells.drain() == ["succeeded"]
    assert not tracing.enabled()  # nor did a run turn it on


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_standard_variables_turn_it_on(environ, wanted):
    assert tracing.wanted(environ) is wanted


def test_the_exporters_are_the_ones_named():
    assert [type(e) for e in tracing.exporters_from_environment({})] == [OTLPSpanExporter]
    both = tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert [type(e) for e in both] == [OTLPSpanExporter, ConsoleSpanExporter]
    assert tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "none"}) == []


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint on the loopback interface: keeps what it is sent."""

    received: list[ExportTraceServiceRequest] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_environment_exports_over_otlp_http(doorbells, monkeypatch, collector):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "durable-test")
    tracing.reset()
    try:
        assert tracing.enabled()
        run = Run.objects.start("tracing_child", {"question": "Exported?"})
        assert doorbells.drain() == ["succeeded"]
        tracing.flush()
    finally:
        tracing.reset()

    exported = [
        (resource.resource, span)
        for request in Collector.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in exported}
    assert {"run tracing_child", "execute tracing_child", "step llm:ask", "chat fake-1"} <= names
    assert {span.trace_id.hex() for _, span in exported} == {run.idempotency_key}
    service = {
        a.value.string_value
        for resource, _ in exported
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert service == {"durable-test"}


# --- real workers ---------------------------------------------------------------------------


@pytest.fixture
def collector():
    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Collector.received = []
    yield server
    server.shutdown()
    server.server_close()


def exported_spans() -> list:
    return [
        span
        for request in list(Collector.received)
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


@pytest.mark.acceptance
def test_a_run_resumed_on_another_worker_after_a_kill_stays_one_trace(tmp_path, collector):
    from agentkit.models import FaultMark, ProviderCall
    from tests.processes import Cluster, wait_for

    model_step = 8  # the research agent's fifth model call
    cluster = Cluster(
        tmp_path,
        DURABLE_WORKFLOW_MODULES="tests.workflows,agentkit.demos",
        AGENTS_LLM_PROVIDER="fake",
        AGENTS_FAKE_FAILURE_RATE="0",
        AGENTS_PAUSE_AT_STEP=str(model_step),
        AGENTS_PAUSE_SECONDS="120",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    question = "When a worker crashes, how are its runs recovered and what happens to its steps?"
    try:
        first = cluster.worker("first")
        cluster.beat()
        run = Run.objects.start("research_agent", {"question": question}, queue=cluster.queue)
        wait_for(lambda: FaultMark.objects.filter(run=run).exists(), 60, "the pause at step 8", cluster)
        wait_for(lambda: len(named_exported("chat fake-1")) == 4, 30, "the first worker's spans", cluster)
        cluster.kill(first)
        cluster.worker("second")
        wait_for(
            lambda: Run.objects.get(pk=run.pk).status == Status.SUCCEEDED, 60, "the run to succeed", cluster
        )
        finished = lambda: any(  # noqa: E731
            a.key == "durable.delivery.outcome" and a.value.string_value == "succeeded"
            for span in named_exported("execute research_agent")
            for a in span.attributes
        )
        wait_for(finished, 30, "the last delivery's span", cluster)
    finally:
        cluster.stop()

    spans = exported_spans()
    key = run.idempotency_key
    assert {span.trace_id.hex() for span in spans} == {key}
    (root,) = named_exported("run research_agent")
    assert int.from_bytes(root.span_id, "big") == tracing.root_span_id(key)
    # The killed worker's delivery never ended, so never left; the second worker's did,
    # under the same root, and each model call made by either worker is in the trace once.
    (delivery,) = named_exported("execute research_agent")
    assert int.from_bytes(delivery.parent_span_id, "big") == tracing.root_span_id(key)
    assert len(named_exported("chat fake-1")) == ProviderCall.objects.filter(run=run).count() == 8


def named_exported(name: str) -> list:
    return [span for span in exported_spans() if span.name == name]
