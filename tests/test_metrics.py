"""/metrics: Prometheus text from a few aggregate queries, behind a token or an address list."""

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from api import metrics
from runs.models import AuditEntry, Run, Status, WorkerProcess
from steps.models import Checkpoint, CheckpointStatus
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)

OLD = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _fresh(settings):
    workflows.CALLS.clear()
    workflows.TOGGLES.clear()
    workflows.PAYMENTS.__init__()
    settings.DURABLE_METRICS_TOKEN = "s3cret"
    settings.DURABLE_METRICS_ALLOWED_IPS = []
    settings.DURABLE_METRICS_CACHE_SECONDS = 0
    metrics._cache.update(at=0.0, body=b"")


def scrape(client) -> dict:
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


# --- access ------------------------------------------------------------------------------


def test_it_wants_the_bearer_token(client):
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token s3cret").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_it_answers_addresses_on_the_allow_list(client, settings):
    settings.DURABLE_METRICS_TOKEN = ""
    settings.DURABLE_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.0.2.7"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="192.0.2.8")
    assert refused.status_code == 403
    assert b"may not read metrics" in refused.content


def test_it_is_off_until_a_setting_turns_it_on(client, settings):
    settings.DURABLE_METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 403
    assert b"set DURABLE_METRICS_TOKEN or DURABLE_METRICS_ALLOWED_IPS" in response.content


def test_it_answers_405_to_anything_but_get(client):
    assert client.post("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 405


# --- content -----------------------------------------------------------------------------


def test_it_counts_runs_steps_failures_recoveries_and_dead_letters(client, doorbells):
    for _ in range(2):
        Run.objects.start("arithmetic", {"a": 1, "b": 2})
    Run.objects.start("malformed", {})
    workflows.PAYMENTS.timeouts_left = 2
    Run.objects.start("payment", {"cents": 1})
    exhaust_retries(doorbells, rounds=3)
    Run.objects.start("approval", {})
    doorbells.drain()
    lost = Run.objects.start("arithmetic", {"a": 0, "b": 0})
    AuditEntry.record(lost, "recover", None, details={"outcome": "pending"})
    AuditEntry.record(lost, "recover", None, details={"outcome": "dead"})
    Run.objects.filter(pk=lost.pk).update(status=Status.DEAD)
    WorkerProcess.objects.all().delete()
    WorkerProcess.beat("w1@host", "host", 123)
    WorkerProcess.objects.create(name="gone@host", hostname="host", pid=1, heartbeat_at=timezone.now() - OLD)

    samples = scrape(client)

    assert value(samples, "durable_runs", status="succeeded", workflow="arithmetic") == 2
    assert value(samples, "durable_runs", status="failed", workflow="malformed") == 1
    assert value(samples, "durable_runs", status="waiting", workflow="approval") == 1
    assert value(samples, "durable_runs", status="dead", workflow="arithmetic") == 1
    assert value(samples, "durable_dead_letter_runs") == 1
    assert value(samples, "durable_steps_completed_total", workflow="arithmetic", step="add") == 2
    assert value(samples, "durable_steps_completed_total", workflow="payment", step="charge") == 1
    assert value(samples, "durable_steps_failed_total", workflow="malformed", step="bad_request") == 1
    assert value(samples, "durable_step_attempts_failed_total", workflow="payment", step="charge") == 2
    assert value(samples, "durable_recoveries_total", outcome="pending") == 1
    assert value(samples, "durable_recoveries_total", outcome="dead") == 1
    assert value(samples, "durable_dead_letters_total") == 1
    assert value(samples, "durable_worker_processes") == 1


def test_it_builds_a_step_duration_histogram(client, doorbells):
    run = Run.objects.start("counter", {"steps": 0})
    start = timezone.now() - timedelta(hours=1)
    for position, seconds in enumerate([0.005, 0.3, 4, 100]):
        Checkpoint.objects.create(
            run=run,
            position=position,
            name="think",
            status=CheckpointStatus.SUCCEEDED,
            output=None,
            started_at=start,
            finished_at=start + timedelta(seconds=seconds),
        )
    samples = scrape(client)
    labels = {"workflow": "counter", "step": "think"}
    bucket = "durable_step_duration_seconds_bucket"
    assert value(samples, bucket, le="0.01", **labels) == 1
    assert value(samples, bucket, le="0.5", **labels) == 2
    assert value(samples, bucket, le="5.0", **labels) == 3
    assert value(samples, bucket, le="120.0", **labels) == 4
    assert value(samples, bucket, le="+Inf", **labels) == 4
    assert value(samples, "durable_step_duration_seconds_count", **labels) == 4
    assert value(samples, "durable_step_duration_seconds_sum", **labels) == pytest.approx(104.305)


def test_it_adds_up_llm_tokens_and_cost_and_ignores_missing_or_odd_values(client, doorbells):
    Run.objects.start("metered", {"prompt": "how are you today"})  # 4 input, 3 output tokens
    doorbells.drain()
    run = Run.objects.start("counter", {"steps": 0})
    now = timezone.now()
    for position, meta in enumerate(
        [
            {"input_tokens": 100, "output_tokens": 20, "cost_usd": 0.0125},
            {"input_tokens": "lots", "cost_usd": None},  # not numbers: skipped
            None,
            ["not", "an", "object"],
        ]
    ):
        Checkpoint.objects.create(
            run=run,
            position=position,
            name="llm",
            status=CheckpointStatus.SUCCEEDED,
            started_at=now,
            finished_at=now,
            meta=meta,
        )
    samples = scrape(client)
    assert value(samples, "durable_llm_input_tokens_total", workflow="metered", step="metered") == 4
    assert value(samples, "durable_llm_output_tokens_total", workflow="metered", step="metered") == 3
    assert value(samples, "durable_llm_cost_usd_total", workflow="metered", step="metered") == 0
    assert value(samples, "durable_llm_input_tokens_total", workflow="counter", step="llm") == 100
    assert value(samples, "durable_llm_output_tokens_total", workflow="counter", step="llm") == 20
    assert value(samples, "durable_llm_cost_usd_total", workflow="counter", step="llm") == pytest.approx(
        0.0125
    )


def test_it_costs_the_same_few_queries_however_many_rows(client, doorbells, django_assert_max_num_queries):
    Run.objects.start("counter", {"steps": 2})
    doorbells.drain()
    with django_assert_max_num_queries(6):
        scrape(client)
    for _ in range(20):
        Run.objects.start("counter", {"steps": 5})
    doorbells.drain()
    with django_assert_max_num_queries(6):
        scrape(client)


def test_it_answers_repeated_scrapes_from_memory(client, doorbells, settings, django_assert_num_queries):
    settings.DURABLE_METRICS_CACHE_SECONDS = 60
    Run.objects.start("arithmetic", {"a": 1, "b": 1})
    first = scrape(client)
    Run.objects.start("arithmetic", {"a": 2, "b": 2})
    with django_assert_num_queries(0):
        assert scrape(client) == first
