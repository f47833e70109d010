"""/metrics: Prometheus text from a few aggregate queries, behind a token or an address list."""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from api import metrics, tallies
from api.models import Tally
from runs.models import AuditEntry, Run, Status, WorkerProcess
from runs.retention import PRUNABLE_STATUSES, prune
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests import workflows
from tests.test_engine import exhaust_retries

pytestmark = pytest.mark.django_db(transaction=True)

OLD = timedelta(hours=1)
SETTLE = 60


@pytest.fixture(autouse=True)
def _fresh(settings):
    workflows.CALLS.clear()
    workflows.TOGGLES.clear()
    workflows.PAYMENTS.__init__()
    settings.DURABLE_METRICS_TOKEN = "s3cret"
    settings.DURABLE_METRICS_ALLOWED_IPS = []
    settings.DURABLE_METRICS_CACHE_SECONDS = 0
    settings.DURABLE_METRICS_SETTLE_SECONDS = SETTLE
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


def scrape_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        scrape(client)
    return len(queries)


def later(seconds: float):
    return time_machine.travel(timezone.now() + timedelta(seconds=seconds), tick=False)


def test_a_scrape_costs_the_same_few_queries_however_many_rows(client, doorbells):
    Run.objects.start("counter", {"steps": 2})
    doorbells.drain()
    scrape(client)  # the first scrape ever starts the tallies
    small = scrape_queries(client)
    for _ in range(20):
        Run.objects.start("counter", {"steps": 5})
    doorbells.drain()
    large = scrape_queries(client)
    # One snapshot (BEGIN, COMMIT, and on PostgreSQL its isolation level) reading the
    # tallies and the checkpoints, attempts and recoveries after them; runs; workers.
    assert small == large <= 9
    with later(SETTLE + 1):
        # Rows old enough join the tallies: at most one more write per table.
        assert large < scrape_queries(client) <= large + len(tallies.SOURCES)
    for _ in range(20):
        Run.objects.start("counter", {"steps": 5})
    doorbells.drain()
    with later(SETTLE + 2):
        assert scrape_queries(client) == large


def counters(samples: dict) -> dict:
    gauges = {"durable_runs", "durable_dead_letter_runs", "durable_worker_processes"}
    return {key: value for key, value in samples.items() if key[0] not in gauges}


def old_runs_of_every_kind(doorbells) -> list[Run]:
    workflows.PAYMENTS.timeouts_left = 2
    runs = [Run.objects.start("payment", {"cents": 1})]
    exhaust_retries(doorbells, rounds=3)
    runs += [Run.objects.start("arithmetic", {"a": 1, "b": 2}), Run.objects.start("malformed", {})]
    runs.append(Run.objects.start("metered", {"prompt": "how are you today"}))
    doorbells.drain()
    lost = Run.objects.start("arithmetic", {"a": 0, "b": 0})
    AuditEntry.record(lost, "recover", None, details={"outcome": "dead"})
    Run.objects.filter(pk=lost.pk).update(status=Status.DEAD)
    when = timezone.now() - timedelta(days=40)
    Run.objects.update(finished_at=when, updated_at=when)
    return [*runs, lost]


def test_counters_never_drop_when_the_rows_they_counted_are_pruned(client, doorbells):
    old_runs_of_every_kind(doorbells)
    first = counters(scrape(client))  # nothing is in a tally yet: every row is counted live
    assert value(first, "durable_steps_completed_total", workflow="payment", step="charge") == 1
    assert value(first, "durable_step_attempts_failed_total", workflow="payment", step="charge") == 2

    report = prune(timedelta(days=30), statuses=PRUNABLE_STATUSES)

    assert report.runs == 5 and not Checkpoint.objects.exists() and not Attempt.objects.exists()
    assert counters(scrape(client)) == first
    with later(SETTLE + 1):
        assert counters(scrape(client)) == first  # the tallies took them in: nothing to add
    Run.objects.start("arithmetic", {"a": 1, "b": 1})
    doorbells.drain()
    after = scrape(client)
    assert value(after, "durable_steps_completed_total", workflow="arithmetic", step="add") == 2
    assert value(after, "durable_step_attempts_failed_total", workflow="payment", step="charge") == 2


def test_counters_never_drop_when_runs_are_pruned_after_their_rows_joined_the_tallies(client, doorbells):
    runs = old_runs_of_every_kind(doorbells)
    scrape(client)
    with later(SETTLE + 1):
        settled = counters(scrape(client))
    assert Tally.objects.get(source="checkpoints").counted_to == Checkpoint.objects.latest("pk").pk
    with later(SETTLE + 2):
        prune(timedelta(days=30), statuses=PRUNABLE_STATUSES)
        assert not Run.objects.filter(pk__in=[run.pk for run in runs]).exists()
        assert counters(scrape(client)) == settled


def test_rows_in_a_tally_are_not_read_again(client, doorbells):
    Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    scrape(client)
    with later(SETTLE + 1):
        settled = counters(scrape(client))
    # Gone without a prune (nothing settles them): only rows after the tally are read.
    Checkpoint.objects.all()._raw_delete(connection.alias)
    assert counters(scrape(client)) == settled


def test_two_scrapes_adding_the_same_rows_to_a_tally_add_them_once(client, doorbells):
    Run.objects.start("counter", {"steps": 3})
    doorbells.drain()
    scrape(client)
    now = timezone.now() + timedelta(seconds=SETTLE + 1)
    first, second = Tally.objects.get(source="checkpoints"), Tally.objects.get(source="checkpoints")
    rows = [('["counter", "count", "succeeded"]', {"n": 3})]
    assert first.fold(rows, first.seen_to, first.seen_to, now)
    assert not second.fold(rows, second.seen_to, second.seen_to, now)
    assert Tally.objects.get(source="checkpoints").totals == {'["counter", "count", "succeeded"]': {"n": 3}}


def test_a_prune_before_any_scrape_writes_no_tally(doorbells):
    Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    Run.objects.update(finished_at=timezone.now() - timedelta(days=40))
    assert prune(timedelta(days=30)).runs == 1
    assert not Tally.objects.exists()


def test_it_answers_repeated_scrapes_from_memory(client, doorbells, settings, django_assert_num_queries):
    settings.DURABLE_METRICS_CACHE_SECONDS = 60
    Run.objects.start("arithmetic", {"a": 1, "b": 1})
    first = scrape(client)
    Run.objects.start("arithmetic", {"a": 2, "b": 2})
    with django_assert_num_queries(0):
        assert scrape(client) == first
