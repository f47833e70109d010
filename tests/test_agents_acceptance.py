"""The research agent on real celery workers, killed for real: it resumes at the next call.

The fake model's calls are counted in the agents_providercall table, which the
worker processes write and this test reads, so a repeated model call would show.
"""

import pytest
from django.db.models import Count

from agentkit import history
from agentkit.models import FaultMark, ProviderCall
from runs.models import Run, Status
from steps.models import Checkpoint
from tests.processes import Cluster, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

QUESTION = "When a worker crashes, how are its runs recovered and what happens to its steps?"
MODEL_STEP = 8  # the fifth model call of this question's 15 steps


def agent_cluster(tmp_path, **env):
    return Cluster(
        tmp_path,
        DURABLE_WORKFLOW_MODULES="tests.workflows,agentkit.demos",
        AGENTS_LLM_PROVIDER="fake",
        AGENTS_FAKE_FAILURE_RATE="0",
        AGENTS_FAKE_LATENCY="0.02",
        **env,
    )


def status_of(run):
    return Run.objects.values_list("status", flat=True).get(pk=run.pk)


def assert_each_model_call_made_once(run):
    calls = ProviderCall.objects.filter(run=run)
    assert list(calls.values("position").annotate(n=Count("id")).filter(n__gt=1)) == []
    llm_positions = Checkpoint.objects.filter(run=run, name="llm:research").values_list("position", flat=True)
    assert sorted(calls.values_list("position", flat=True)) == sorted(llm_positions)
    assert set(calls.values_list("outcome", flat=True)) == {"ok"}


def assert_finished_research(run):
    run.refresh_from_db()
    assert run.output["stopped"] == "final"
    assert run.steps_done == 15
    assert (run.output["model_calls"], run.output["tool_calls"]) == (8, 7)
    assert "[leases-heartbeats]" in run.output["answer"]
    assert Checkpoint.objects.filter(run=run).count() == 15  # no position executed twice


def test_it_resumes_the_research_agent_at_the_next_model_call_after_the_worker_is_killed(tmp_path):
    cluster = agent_cluster(tmp_path, AGENTS_PAUSE_AT_STEP=str(MODEL_STEP), AGENTS_PAUSE_SECONDS="120")
    try:
        first = cluster.worker("first")
        cluster.beat()
        run = Run.objects.start("research_agent", {"question": QUESTION}, queue=cluster.queue)
        # The worker is now inside the model step at position 8, before calling the model.
        wait_for(lambda: FaultMark.objects.filter(run=run).exists(), 60, "the pause at step 8", cluster)
        assert sorted(ProviderCall.objects.filter(run=run).values_list("position", flat=True)) == [0, 2, 4, 6]

        cluster.kill(first)
        assert status_of(run) == Status.RUNNING
        second = cluster.worker("second")
        wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the run to succeed", cluster)

        assert_finished_research(run)
        assert_each_model_call_made_once(run)
        pids = dict(ProviderCall.objects.filter(run=run).values_list("position", "pid"))
        assert pids[6] == first.pid and pids[MODEL_STEP] == second.pid
        assert Run.objects.get(pk=run.pk).recovery_count == 1
        # The call made after the kill kept only its new messages, and references the call
        # the first worker recorded: its whole conversation reads back from the two.
        step = Checkpoint.objects.get(run=run, position=MODEL_STEP)
        assert step.meta["request"]["history"] == {"position": 6, "messages": 8}
        rebuilt = history.rebuild(step.meta["request"], history.earlier_than(step), limit=100)
        assert (len(rebuilt.messages), rebuilt.missing) == (10, False)
    finally:
        cluster.stop()


def test_it_recovers_when_fault_injection_kills_the_worker_at_step_n(tmp_path):
    cluster = agent_cluster(tmp_path, AGENTS_CRASH_AT_STEP=str(MODEL_STEP))
    try:
        first = cluster.worker("first")
        cluster.beat()
        run = Run.objects.start("research_agent", {"question": QUESTION}, queue=cluster.queue)
        wait_for(lambda: first.poll() is not None, 60, "the worker to kill itself at step 8", cluster)
        assert status_of(run) == Status.RUNNING
        assert Run.objects.get(pk=run.pk).steps_done == MODEL_STEP

        cluster.worker("second")
        wait_for(lambda: status_of(run) == Status.SUCCEEDED, 60, "the run to succeed", cluster)

        assert_finished_research(run)
        assert_each_model_call_made_once(run)
        mark = FaultMark.objects.get(run=run)
        assert (mark.kind, mark.position, mark.pid) == ("crash", MODEL_STEP, first.pid)
    finally:
        cluster.stop()
