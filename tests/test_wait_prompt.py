"""What a signal wait asks a person: ctx.wait_for_signal(..., prompt=...), stored with the
wait, shown escaped and capped, never part of what a replay compares."""

import copy
import json

import pytest
from django.urls import reverse

from runs.export import export_run, replay
from runs.models import ASKED_CHARS, WAIT_PROMPT_CHARS, Run, Status, WaitKind
from steps.models import Checkpoint
from tests.factories import make_viewer, make_waiting_run

XSS = "<script>window.__xss=1</script>"


def waiting(doorbells, **data) -> Run:
    run = Run.objects.start("approval", data)
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    return run


def recorded(run: Run) -> list[tuple]:
    """The run's checkpoints as a replay compares them (the signal's own row id aside)."""
    rows = Checkpoint.objects.filter(run=run).order_by("position").values_list("position", "name", "output")
    return [
        (position, name, output["payload"] if name.startswith("signal:") else output)
        for position, name, output in rows
    ]


# --- unit: the model's answer to "what does this run ask" --------------------------------


def test_it_asks_the_prompt_before_any_summary():
    run = Run(wait_kind=WaitKind.SIGNAL, wait_prompt="Refund $320 to A-7?")
    assert run.asks({"summary": "from the step"}) == "Refund $320 to A-7?"


def test_without_a_prompt_it_asks_the_previous_steps_summary():
    run = Run(wait_kind=WaitKind.SIGNAL)
    assert run.asks({"summary": "at the top"}) == "at the top"
    assert run.asks({"data": {"summary": "an LLM's JSON"}}) == "an LLM's JSON"
    assert run.asks({"summary": 3}) == "" and run.asks(None) == "" and run.asks("text") == ""


def test_what_it_asks_is_capped():
    assert len(Run(wait_prompt="x" * WAIT_PROMPT_CHARS).asks()) == ASKED_CHARS
    assert len(Run().asks({"summary": "y" * 5000})) == ASKED_CHARS


# --- the engine stores it with the wait -------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_prompt_is_stored_with_the_wait_and_cleared_when_the_run_goes_on(doorbells):
    run = waiting(doorbells, prompt="Approve the plan of 42?")
    assert (run.status, run.wait_signal, run.wait_prompt) == (
        Status.WAITING,
        "approve",
        "Approve the plan of 42?",
    )
    run.send_signal("approve", {"approved": True, "by": "alice"}, by="alice")
    assert doorbells.drain() == ["succeeded"]
    run.refresh_from_db()
    assert (run.wait_kind, run.wait_prompt) == ("", "")


@pytest.mark.django_db(transaction=True)
def test_a_long_prompt_is_cut_when_stored(doorbells):
    run = waiting(doorbells, prompt="z" * (WAIT_PROMPT_CHARS * 3))
    assert run.wait_prompt == "z" * WAIT_PROMPT_CHARS


@pytest.mark.django_db(transaction=True)
def test_a_prompt_changes_no_checkpoint_and_no_replay(doorbells):
    asked = waiting(doorbells, prompt="Approve?")
    silent = waiting(doorbells)
    for run in (asked, silent):
        run.send_signal("approve", {"approved": True, "by": "bob"}, by="bob")
        doorbells.drain()
        run.refresh_from_db()
        assert run.status == Status.SUCCEEDED
    assert recorded(asked) == recorded(silent)

    document = json.loads(json.dumps(export_run(asked)))
    assert replay(copy.deepcopy(document)).outcome == "clean"
    document["run"]["input"]["prompt"] = "Another question, same steps?"
    assert replay(document).outcome == "clean"


# --- pages -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_inbox_and_the_run_page_show_the_prompt_escaped_instead_of_the_summary(client):
    run = make_waiting_run("approval", wait_prompt=f"Refund $320? {XSS}")
    Checkpoint.objects.filter(run=run, position=0).update(output={"summary": "the step's summary"})
    client.force_login(make_viewer())
    for page in (reverse("inbox"), reverse("run_detail", args=[run.pk])):
        html = client.get(page).content.decode()
        assert "Refund $320? &lt;script&gt;window.__xss=1&lt;/script&gt;" in html
        assert XSS not in html
        assert "the step&#x27;s summary</p>" not in html and "the step's summary</p>" not in html


@pytest.mark.django_db
def test_the_run_page_falls_back_to_the_summary_of_the_step_before_the_wait(client):
    run = make_waiting_run("approval")
    Checkpoint.objects.filter(run=run, position=0).update(output={"data": {"summary": "Refund $12?"}})
    client.force_login(make_viewer())
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert '<p class="asked" id="run-asks"><span class="muted">Asks:</span> Refund $12?</p>' in html
