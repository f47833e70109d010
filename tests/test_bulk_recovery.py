"""Bulk recovery plans: select by filter, count and sample, then act in batches, once per run."""

import pytest
from django.contrib.auth.models import User

from runs.bulk import RETRYING, BulkError, BulkPlan, Selection, retrying_runs
from runs.models import AuditEntry, Run, Status
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return User.objects.create_user("olivia", password="x")


def pricing_runs(doorbells, prices) -> list[Run]:
    runs = [Run.objects.start("pricing", {"name": f"item-{i}", "price": p}) for i, p in enumerate(prices)]
    doorbells.drain()
    return [Run.objects.get(pk=run.pk) for run in runs]


def test_it_counts_samples_and_retries_every_run_failed_at_a_step(doorbells, operator):
    failed = pricing_runs(doorbells, [-1, -2, -3])
    ok = pricing_runs(doorbells, [5])[0]
    other = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    plan = BulkPlan(
        "retry", Selection(workflow="pricing", status="failed", failed_step="check_price"), "check_price"
    )
    preview = plan.preview(sample=2)
    assert (preview["selected"], preview["eligible"]) == (3, 3)
    assert [row["id"] for row in preview["sample"]] == [failed[0].pk, failed[1].pk]
    assert all(row["position"] == 1 for row in preview["sample"])
    assert preview["code_warnings"] == []

    batch = plan.apply_batch(by=operator, reason="validator fixed", size=2)
    assert (batch.done, batch.refused, batch.remaining) == ([failed[0].pk, failed[1].pk], [], 1)
    batch = plan.apply_batch(by=operator, reason="validator fixed", size=2)
    assert (batch.done, batch.remaining) == ([failed[2].pk], 0)
    assert plan.apply_batch(by=operator).done == []  # safe to run twice
    entries = AuditEntry.objects.filter(action="retry").order_by("run_id")
    assert [e.run_id for e in entries] == [run.pk for run in failed]
    assert all(e.details["from_position"] == 1 and e.reason == "validator fixed" for e in entries)
    assert Run.objects.get(pk=ok.pk).status == Status.SUCCEEDED
    assert Run.objects.get(pk=other.pk).epoch == 0


def test_the_filters_narrow_the_selection(doorbells):
    runs = pricing_runs(doorbells, [-1, 4])
    Run.objects.filter(pk=runs[0].pk).update(code_version="old")
    assert list(Selection(code_version="old").runs()) == [Run.objects.get(pk=runs[0].pk)]
    assert Selection(error_type="NonRetryableError").runs().count() == 1
    assert Selection(failed_step="read_price").runs().count() == 0
    assert Selection(ids=[runs[1].pk], status="failed").runs().count() == 0
    plan = BulkPlan("resume", Selection(code_version="old"))
    assert "ran code version old" in plan.preview()["code_warnings"][0]


def test_it_refuses_a_plan_it_cannot_carry_out():
    with pytest.raises(BulkError, match="needs the step's name"):
        BulkPlan("retry", Selection(status="failed"))
    with pytest.raises(BulkError, match="Unknown action"):
        BulkPlan("delete", Selection(status="failed"))


def test_retrying_runs_show_attempt_n_of_m_and_retry_now_in_bulk(doorbells, operator):
    workflows.PAYMENTS.timeouts_left = 100
    run = Run.objects.start("payment", {"cents": 700})
    doorbells.drain()
    row = retrying_runs().get()
    assert (row.pk, row.failed_attempts, row.max_attempts, row.retrying_step) == (run.pk, 1, 4, "charge")
    plan = BulkPlan("retry_now", Selection(status=RETRYING))
    assert plan.preview()["eligible"] == 1
    workflows.PAYMENTS.timeouts_left = 0
    assert plan.apply_batch(by=operator).done == [run.pk]
    assert doorbells.drain() == ["succeeded"]
