"""manage.py seed_runs: synthetic runs for demos and page-speed measurements."""

from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext

from runs.models import AuditEntry, Run, Status
from steps.models import Attempt, Checkpoint, CheckpointStatus
from tests.factories import make_viewer

pytestmark = pytest.mark.django_db


def seed(*args) -> str:
    out = StringIO()
    call_command("seed_runs", *map(str, args), stdout=out)
    return out.getvalue()


def test_it_seeds_a_few_hundred_runs_by_default():
    assert "Seeded 300 runs" in seed("--seed", 1)
    assert Run.objects.count() == 300


def test_it_mixes_statuses_and_records_failures():
    seed(400, "--seed", 7, "--batch", 64)
    statuses = Counter(Run.objects.values_list("status", flat=True))
    for status in (
        Status.SUCCEEDED,
        Status.FAILED,
        Status.DEAD,
        Status.RUNNING,
        Status.WAITING,
        Status.PENDING,
    ):
        assert statuses[status] > 0, status
    for run in Run.objects.filter(status=Status.FAILED)[:20]:
        assert run.error_type and run.error_message and run.error_traceback
        failed = run.checkpoints.get(position=run.error_position)
        assert failed.status == CheckpointStatus.FAILED
        assert failed.error_type == run.error_type
        assert Attempt.objects.filter(run=run, position=run.error_position).count() == failed.attempts
    assert AuditEntry.objects.filter(action="recover").exists()


def test_steps_are_consistent_with_their_runs():
    seed(200, "--seed", 3, "--batch", 17)
    counts = dict(Checkpoint.objects.values_list("run").annotate(n=Count("pk")))
    for run in Run.objects.all():
        assert counts.get(run.pk, 0) == run.steps_done
    positions = Checkpoint.objects.values("run", "position").annotate(n=Count("pk")).filter(n__gt=1)
    assert not positions.exists()  # one live checkpoint per position


def test_ids_follow_creation_time():
    seed(120, "--seed", 5, "--batch", 50)
    created = list(
        Run.objects.exclude(status__in=["running", "pending"])
        .order_by("pk")
        .values_list("created_at", flat=True)
    )
    assert created == sorted(created)


def test_it_writes_in_batches_with_a_bounded_number_of_queries():
    with CaptureQueriesContext(connection) as few:
        seed(50, "--batch", 50, "--seed", 1)
    with CaptureQueriesContext(connection) as more:
        seed(200, "--batch", 50, "--seed", 1)
    # A handful of statements per batch, never one per run.
    assert len(more) < len(few) * 4 + 10
    assert len(more) < 200


def test_it_adds_a_long_run_on_request():
    seed(0, "--long-run", 1000)
    run = Run.objects.get()
    assert run.status == Status.SUCCEEDED
    assert run.checkpoints.count() == run.steps_done == 1000


def test_model_calls_are_billed_as_the_agents_record_them():
    from agentkit import accounting
    from agentkit.models import ProviderCall

    seed(100, "--seed", 4)
    llm_steps = Checkpoint.objects.filter(name__startswith="llm")
    assert ProviderCall.objects.count() == llm_steps.count() > 0
    step = llm_steps.first()
    call = ProviderCall.objects.get(run=step.run, position=step.position)
    assert (call.input_tokens, call.output_tokens) == (step.meta["input_tokens"], step.meta["output_tokens"])
    assert call.cost_usd == step.meta["cost_usd"] > 0
    figures = accounting.llm_step(step.meta)
    assert figures["model"] == "claude-sonnet-4-5" and figures["cost_usd"] == call.cost_usd


def test_the_dashboard_renders_seeded_data(client):
    seed(150, "--seed", 11, "--long-run", 300)
    client.force_login(make_viewer())
    assert client.get("/").status_code == 200
    for run in Run.objects.order_by("-pk")[:3]:
        assert client.get(f"/runs/{run.pk}/").status_code == 200


@pytest.mark.parametrize(
    "args", [["-1"], ["10", "--batch", "0"], ["10", "--hours", "0"], ["10", "--max-steps", "0"]]
)
def test_it_refuses_bad_arguments(args):
    with pytest.raises(CommandError):
        call_command("seed_runs", *args, stdout=StringIO())
