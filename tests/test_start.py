"""Starting runs: validation, deduplication, code versions, checkpoint facts."""

import pytest

from runs.models import AuditEntry, Run, Status
from runs.workflow import UnknownWorkflow, registry
from tests import workflows  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_refuses_an_unknown_workflow():
    with pytest.raises(UnknownWorkflow, match="No workflow named 'nope'"):
        Run.objects.start("nope", {})
    assert Run.objects.count() == 0


def test_it_returns_the_same_run_for_the_same_client_key(doorbells):
    first, created = Run.objects.start_or_get("arithmetic", {"a": 1, "b": 2}, dedupe_key="order-17")
    assert created
    again, created_again = Run.objects.start_or_get("arithmetic", {"a": 1, "b": 2}, dedupe_key="order-17")
    assert (again.pk, created_again) == (first.pk, False)
    assert doorbells.rung == [first.pk]
    assert AuditEntry.objects.filter(action="start").count() == 1
    other = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    assert other.pk != first.pk and other.dedupe_key is None


def test_it_records_the_workflow_code_version():
    run = Run.objects.start("metered", {"prompt": "how are you"})
    assert run.code_version == "2026-11-27.1"
    hashed = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    assert hashed.code_version == registry.get("arithmetic").version
    assert hashed.code_version.startswith("src-")


def test_it_saves_what_a_step_reports_about_itself_on_its_checkpoint(doorbells):
    run = Run.objects.start("metered", {"prompt": "how are you"})
    assert doorbells.drain() == ["succeeded"]
    checkpoint = run.live_checkpoints().get()
    assert checkpoint.meta == {"model": "fake-1", "input_tokens": 3, "output_tokens": 3}
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED


# --- queues ------------------------------------------------------------------------------


def test_it_refuses_a_queue_no_worker_consumes(doorbells, settings):
    from runs.models import UnknownQueue

    settings.DURABLE_QUEUES = ["durable", "llm"]
    with pytest.raises(UnknownQueue, match=r"No worker consumes queue .nowhere.*durable, llm"):
        Run.objects.start("arithmetic", {"a": 1, "b": 1}, queue="nowhere")
    assert not Run.objects.exists()
    assert Run.objects.start("arithmetic", {"a": 1, "b": 1}, queue="llm").queue == "llm"


def test_it_flags_a_pending_run_whose_queue_has_had_no_live_worker_for_a_minute(doorbells, settings):
    from datetime import timedelta

    from django.utils import timezone

    from runs.models import WorkerProcess

    settings.DURABLE_QUEUES = ["durable", "llm"]
    run = Run.objects.start("arithmetic", {"a": 1, "b": 1}, queue="llm")
    assert not run.queue_unserved()  # no worker has said what it consumes: nothing to judge by
    WorkerProcess.beat("w:1:a", "w", 1, ["durable"])
    assert run.queue_unserved()
    WorkerProcess.objects.create(
        name="w:2:b", hostname="w", pid=2, queues=["llm"], heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    assert not run.queue_unserved()  # its worker went quiet 30 s ago: not a minute yet
    WorkerProcess.objects.filter(name="w:2:b").update(heartbeat_at=timezone.now() - timedelta(seconds=90))
    assert run.queue_unserved()


def test_a_start_stores_the_run_as_returned_with_its_audit_entry_and_rings_once(doorbells):
    # On PostgreSQL outside a transaction the run and its entry are one statement.
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2}, by="cli", priority=3)
    stored = Run.objects.get(pk=run.pk)
    fields = ("workflow", "input", "status", "priority", "idempotency_key", "code_version", "created_at")
    assert [getattr(stored, name) for name in fields] == [getattr(run, name) for name in fields]
    assert stored.priority == 3 and stored.status == Status.PENDING
    entry = AuditEntry.objects.get(run=stored)
    assert (entry.action, entry.actor_name, entry.details) == ("start", "cli", {"workflow": "arithmetic"})
    assert doorbells.rung == [run.pk]


def test_a_claim_returns_the_run_as_it_left_it_and_a_second_claim_nothing():
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    claimed = Run.objects.claimed(run.pk, "w1", "token-1")
    assert (claimed.pk, claimed.status, claimed.lease_owner, claimed.lease_token, claimed.claims) == (
        run.pk,
        Status.RUNNING,
        "w1",
        "token-1",
        1,
    )
    assert claimed.input == {"a": 1, "b": 2} and claimed.started_at is not None
    assert Run.objects.claimed(run.pk, "w2", "token-2") is None
    assert Run.objects.get(pk=run.pk).lease_token == "token-1"
