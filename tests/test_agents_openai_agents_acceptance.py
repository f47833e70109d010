"""A durable OpenAI Agents SDK agent on real celery workers, SIGKILLed between two tool calls.

The scripted model and the tools run in the worker processes and append a line per real
call to a ledger file; the billing rows are written there too. After the kill and the
resume, every model call and every tool call shows up exactly once.
"""

import pytest

from agentkit.models import FaultMark, ProviderCall
from runs.models import Run, Status
from steps.models import Checkpoint
from tests import openai_agents_workflows  # noqa: F401  (registers the workflow here too)
from tests.processes import Cluster, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

MULTIPLY_STEP = 3  # llm, tool:add, llm, then tool:multiply: the second tool call


def test_a_worker_killed_between_two_tool_calls_resumes_with_no_model_or_tool_call_repeated(tmp_path):
    ledger = tmp_path / "ledger"
    cluster = Cluster(
        tmp_path,
        DURABLE_WORKFLOW_MODULES="tests.workflows,tests.openai_agents_workflows",
        OAI_LEDGER=str(ledger),
        OPENAI_AGENTS_DISABLE_TRACING="1",
        AGENTS_PAUSE_AT_STEP=str(MULTIPLY_STEP),
        AGENTS_PAUSE_SECONDS="120",
    )
    try:
        first = cluster.worker("first")
        run = Run.objects.start("oai_calculator", {}, queue=cluster.queue)
        # The first worker has called add and called the model again; it now holds the multiply step.
        wait_for(lambda: FaultMark.objects.filter(run=run).exists(), 60, "the pause before multiply", cluster)
        assert ledger.read_text().splitlines() == ["model:0", "tool:add", "model:1"]

        cluster.kill(first)
        second = cluster.worker("second")
        wait_for(
            lambda: Run.objects.get(pk=run.pk).status == Status.SUCCEEDED, 60, "the run to succeed", cluster
        )

        run.refresh_from_db()
        assert run.output["answer"] == "The answer is 35."
        assert ledger.read_text().splitlines() == [
            "model:0",
            "tool:add",
            "model:1",
            "tool:multiply",
            "model:2",
        ]
        steps = Checkpoint.objects.filter(run=run).order_by("position").values_list("name", flat=True)
        assert list(steps) == [
            "llm:calculator",
            "tool:add",
            "llm:calculator",
            "tool:multiply",
            "llm:calculator",
        ]
        pids = dict(ProviderCall.objects.filter(run=run).values_list("position", "pid"))
        assert pids == {0: first.pid, 2: first.pid, 4: second.pid}
        assert run.recovery_count == 1
    finally:
        cluster.stop()
