"""Billing records (agents.ProviderCall) outlive their runs and have a retention of their own."""

import importlib
import io
from datetime import timedelta

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.utils import timezone

from agentkit import accounting, fake, llm, tasks
from agentkit.models import ProviderCall
from agentkit.retention import prune_calls
from config.celery import app
from runs.models import AuditEntry, Run
from runs.retention import prune
from runs.workflow import workflow
from tests.test_retention import age, settings_in_subprocess

pytestmark = pytest.mark.django_db(transaction=True)


@workflow("agents_test_billing")
def billing_workflow(ctx, data):
    first = llm.chat(ctx, [llm.user(data["question"])], label="ask")
    return llm.chat(ctx, [llm.user(first["content"])], label="again")["content"]


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    settings.AGENTS_FAKE_LATENCY = 0
    settings.AGENTS_PRICES = {"fake-1": {"input": 2.0, "output": 10.0}}
    fake.reset()
    yield
    fake.reset()


def billed_run(doorbells) -> Run:
    run = Run.objects.start("agents_test_billing", {"question": "How are you?"})
    assert doorbells.drain() == ["succeeded"]
    return run


def call(age: timedelta, cost: float = 0.5, run=None) -> ProviderCall:
    return ProviderCall.objects.create(
        run=run, provider="fake", model="fake-1", cost_usd=cost, created_at=timezone.now() - age
    )


def test_each_call_carries_its_runs_workflow(doorbells, django_assert_num_queries):
    run = billed_run(doorbells)
    assert (
        list(ProviderCall.objects.filter(run=run).values_list("workflow", flat=True))
        == ["agents_test_billing"] * 2
    )
    # A call made outside any run has no workflow.
    llm.complete(llm.make_request([llm.user("hello")]))
    assert ProviderCall.objects.get(run=None).workflow == ""
    # The workflow comes with the run when the caller has it, else in one lookup.
    with django_assert_num_queries(1):
        ProviderCall.objects.create(run=run, provider="fake", model="fake-1")
    with django_assert_num_queries(2):
        assert ProviderCall.objects.create(run_id=run.pk, provider="x", model="y").workflow == run.workflow


def test_pruning_a_run_keeps_its_calls_and_its_cost_per_workflow(doorbells):
    run = billed_run(doorbells)
    before = accounting.cost_by_workflow()
    spent = accounting.totals_for_runs([run.pk])[run.pk]
    assert [row["workflow"] for row in before] == ["agents_test_billing"] and spent["calls"] == 2
    age(run)

    dry = prune(timedelta(days=30), dry_run=True)
    assert dry.unlinked["provider calls"] == 2
    report = prune(timedelta(days=30))

    assert report.runs == 1 and report.unlinked["provider calls"] == 2
    assert "kept, unlinked: " in str(report) and "2 provider calls" in str(report)
    assert not Run.objects.filter(pk=run.pk).exists()
    calls = ProviderCall.objects.filter(workflow="agents_test_billing")
    assert [call.run_id for call in calls] == [None, None]
    after = accounting.cost_by_workflow()
    assert after[0]["cost_usd"] == before[0]["cost_usd"] == spent["cost_usd"] > 0
    assert (after[0]["calls"], after[0]["runs"]) == (2, 0)  # the run itself is gone


def test_the_migration_copies_each_calls_workflow_from_its_run(doorbells):
    run = billed_run(doorbells)
    ProviderCall.objects.update(workflow="")
    call(timedelta(0))  # no run: stays without a workflow
    migration = importlib.import_module("agentkit.migrations.0002_billing_outlives_runs")
    migration.copy_workflows(apps, None)
    assert list(ProviderCall.objects.order_by("pk").values_list("run_id", "workflow")) == [
        (run.pk, "agents_test_billing"),
        (run.pk, "agents_test_billing"),
        (None, ""),
    ]


# --- billing retention ------------------------------------------------------------------


def billing_command(*args) -> str:
    out = io.StringIO()
    call_command("billing", *args, stdout=out)
    return out.getvalue()


def test_it_deletes_calls_older_than_the_retention_in_batches():
    old = [call(timedelta(days=500), cost=1.25) for _ in range(5)]
    recent = call(timedelta(days=10))
    dry = prune_calls(timedelta(days=400), dry_run=True)
    assert (dry.calls, dry.cost_usd, dry.batches) == (5, 6.25, 0)
    assert str(dry).startswith("would delete 5 provider calls made before ") and "($6.25 billed)" in str(dry)
    assert ProviderCall.objects.count() == 6

    report = prune_calls(timedelta(days=400), batch_size=2, by="tester")

    assert (report.calls, report.batches) == (5, 3)
    assert list(ProviderCall.objects.all()) == [recent]
    assert not ProviderCall.objects.filter(pk__in=[c.pk for c in old]).exists()
    entry = AuditEntry.objects.get(action="prune billing")
    assert entry.actor_name == "tester"
    assert (entry.details["provider_calls"], entry.details["cost_usd"]) == (5, 6.25)


def test_it_prunes_billing_from_the_command_line():
    call(timedelta(days=500))
    call(timedelta(days=10))
    dry = billing_command("prune", "--older-than", "400d", "--dry-run")
    assert dry.startswith("would delete 1 provider call ")
    assert ProviderCall.objects.count() == 2
    assert billing_command("prune", "--older-than", "400d").startswith("deleted 1 provider call ")
    assert ProviderCall.objects.count() == 1
    assert AuditEntry.objects.get(action="prune billing").actor_name.startswith("cli:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prune",), "the following arguments are required: --older-than"),
        (("prune", "--older-than", "a year"), "'a year' is not a duration"),
        (("prune", "--older-than", "400d", "--batch-size", "0"), "--batch-size must be at least 1"),
    ],
)
def test_it_explains_bad_billing_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        billing_command(*args)


def test_the_billing_task_follows_the_settings(settings):
    call(timedelta(days=500))
    settings.DURABLE_BILLING_RETENTION = None
    assert "kept for ever" in tasks.prune_billing()
    assert ProviderCall.objects.count() == 1
    settings.DURABLE_BILLING_RETENTION = timedelta(days=400)
    assert tasks.prune_billing().startswith("deleted 1 provider call ")
    assert not ProviderCall.objects.exists()
    assert AuditEntry.objects.get(action="prune billing").actor_name == "beat"


def test_workers_register_the_billing_task():
    app.loader.import_default_modules()
    assert "agents.prune_billing" in app.tasks


def beat_billing_entry(**env) -> str:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "entry = settings.CELERY_BEAT_SCHEDULE.get('durable-prune-billing'); "
        "print(entry and (entry['task'], entry['schedule'].total_seconds()))"
    )
    return settings_in_subprocess(code=code, **env)


def test_beat_prunes_billing_only_when_a_retention_is_set():
    assert beat_billing_entry(DURABLE_BILLING_RETENTION="").stdout.strip() == "None"
    scheduled = beat_billing_entry(DURABLE_BILLING_RETENTION="400d", DURABLE_PRUNE_INTERVAL="6h")
    assert scheduled.stdout.strip() == "('agents.prune_billing', 21600.0)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DURABLE_BILLING_RETENTION": "a year"}, "DURABLE_BILLING_RETENTION: 'a year' is not a duration"),
        (
            {"DURABLE_BILLING_RETENTION": "30d", "DURABLE_PRUNE_OLDER_THAN": "90d"},
            "DURABLE_BILLING_RETENTION must be at least DURABLE_PRUNE_OLDER_THAN",
        ),
    ],
)
def test_it_refuses_a_malformed_billing_setting(env, message):
    result = beat_billing_entry(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr
