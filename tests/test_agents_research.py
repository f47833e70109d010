"""The research agent: a model/tool loop over the local corpus whose length depends on the question."""

import pytest
from django.db.models import Count

from agentkit import demos, fake, faults
from agentkit.models import FaultMark, Note, ProviderCall
from runs.models import Run, Status
from runs.recovery import sweep
from steps.models import Checkpoint
from tests import workflows as engine_test_workflows  # registers the non-demo 'arithmetic'
from tests.conftest import lapse_leases

pytestmark = pytest.mark.django_db(transaction=True)

SHORT = "How do idempotency keys make retrying a payment safe?"
LONG = "When a worker crashes, how are its runs recovered and what happens to its steps?"


class PowerCut(BaseException):
    """Escapes everything, like the worker process dying."""


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.AGENTS_LLM_PROVIDER = "fake"
    settings.AGENTS_FAKE_FAILURE_RATE = 0
    fake.reset()


def research(doorbells, question, **extra):
    run = Run.objects.start("research_agent", {"question": question, **extra})
    doorbells.drain()
    run.refresh_from_db()
    return run


def llm_positions(run):
    return list(Checkpoint.objects.filter(run=run, name="llm:research").values_list("position", flat=True))


def test_it_searches_reads_takes_notes_and_answers_with_citations(doorbells):
    run = research(doorbells, SHORT)
    assert run.status == Status.SUCCEEDED
    names = [c.name for c in run.live_checkpoints()]
    assert names[:3] == ["llm:research", "tool:search_corpus", "llm:research"]
    assert names[-1] == "llm:research"
    assert run.output["stopped"] == "final"
    assert run.output["model_calls"] == names.count("llm:research")
    assert run.output["tool_calls"] == len(names) - names.count("llm:research")
    assert "[idempotency-keys]" in run.output["answer"]
    notes = list(Note.objects.filter(run=run).values_list("source", flat=True))
    assert "idempotency-keys" in notes
    assert names.count("tool:take_note") == len(notes)


def test_it_takes_as_many_steps_as_the_question_needs(doorbells):
    short, long = research(doorbells, SHORT), research(doorbells, LONG)
    assert short.status == long.status == Status.SUCCEEDED
    assert short.steps_done != long.steps_done
    assert {short.steps_done, long.steps_done} == {
        short.output["model_calls"] + short.output["tool_calls"],
        long.output["model_calls"] + long.output["tool_calls"],
    }


def test_it_stops_at_its_step_budget(doorbells):
    run = research(doorbells, LONG, max_steps=5)
    assert run.status == Status.SUCCEEDED
    assert run.output["stopped"] == "budget"
    assert run.steps_done == 5


def test_it_resumes_at_the_next_call_after_a_crash_without_repeating_a_model_call(
    doorbells, settings, monkeypatch
):
    expected = research(doorbells, LONG).output
    ProviderCall.objects.all().delete()

    def power_cut():
        raise PowerCut("crash injected at step 6")

    monkeypatch.setattr(faults, "die", power_cut)
    settings.AGENTS_CRASH_AT_STEP = 6
    run = Run.objects.start("research_agent", {"question": LONG})
    with pytest.raises(PowerCut):
        doorbells.drain()
    assert Run.objects.get(pk=run.pk).steps_done == 6
    calls_before = ProviderCall.objects.filter(run=run).count()

    lapse_leases()
    assert sweep().recovered == 1
    assert doorbells.drain() == ["succeeded"]  # the crash is injected once per run and step

    run.refresh_from_db()
    assert run.output == expected
    assert FaultMark.objects.filter(run=run, kind="crash", position=6).count() == 1
    # Every model call happened exactly once, at its own position.
    calls = ProviderCall.objects.filter(run=run)
    repeated = calls.values("position").annotate(n=Count("id")).filter(n__gt=1)
    assert list(repeated) == []
    assert sorted(calls.values_list("position", flat=True)) == llm_positions(run)
    assert calls.filter(position__lt=6).count() == calls_before


def test_it_injects_faults_only_into_demo_workflows(doorbells, settings, monkeypatch):
    monkeypatch.setattr(faults, "die", lambda: pytest.fail("crashed a workflow that is not a demo"))
    settings.AGENTS_CRASH_AT_STEP = 0
    run = Run.objects.start("arithmetic", {"a": 1, "b": 2})
    doorbells.drain()
    assert Run.objects.get(pk=run.pk).status == Status.SUCCEEDED
    assert engine_test_workflows.arithmetic.__name__ not in faults.FAULTABLE
    assert "research_agent" in demos.WORKFLOWS


def test_it_pauses_once_at_the_configured_step(doorbells, settings, monkeypatch):
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    settings.AGENTS_PAUSE_AT_STEP = 2
    settings.AGENTS_PAUSE_SECONDS = 42
    run = research(doorbells, SHORT)
    assert run.status == Status.SUCCEEDED
    assert slept == [42]
    assert FaultMark.objects.get(run=run).position == 2
