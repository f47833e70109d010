"""Text search over runs in any script, on SQLite and PostgreSQL alike: input, output and
error message, case-insensitive, LIKE wildcards taken literally."""

import pytest

from runs.forms import RunFilterForm
from runs.models import Run, Status
from runs.search import fold, text_condition
from tests.factories import make_run, make_viewer

pytestmark = pytest.mark.django_db

SMART = "“smart quotes”"
EMOJI = "🚀"


def with_output(run: Run, output) -> Run:
    Run.objects.filter(pk=run.pk).update(output=output)
    return run


@pytest.fixture
def runs():
    return {
        "smart": make_run(input={"note": f"said {SMART} twice"}),
        "unicode": make_run(input={"word": "Ünïcode"}),
        "chinese": make_run(input={"customer": "李雷"}),
        "emoji": make_run(input={"launch": f"go {EMOJI} go"}),
        "output": with_output(make_run(), {"reply": "Straße gesperrt für Ölwagen"}),
        "error": make_run(
            Status.FAILED, error_type="ToolError", error_message="Zahlung abgelehnt: Bestellung"
        ),
        "plain": make_run(input={"text": "100% sure_thing a\\b"}),
    }


def found(text: str) -> set[int]:
    return set(Run.objects.filter(text_condition(text)).values_list("pk", flat=True))


@pytest.mark.parametrize(
    ("term", "key"),
    [
        (SMART, "smart"),
        ("smart quotes”", "smart"),
        ("Ünïcode", "unicode"),
        ("ünïCODE", "unicode"),  # case folded beyond ASCII
        ("李雷", "chinese"),
        (EMOJI, "emoji"),
        ("ÖLWAGEN", "output"),  # the output is searched
        ("ABGELEHNT: bestellung", "error"),  # and the error message
    ],
)
def test_it_finds_text_in_any_script(runs, term, key):
    assert found(term) == {runs[key].pk}


def test_a_backslash_matches_only_a_real_backslash(runs):
    assert found("\\") == {runs["plain"].pk}


def test_like_wildcards_are_taken_literally(runs):
    assert found("100%") == {runs["plain"].pk}
    assert found("%") == {runs["plain"].pk}
    assert found("e_x") == set()
    assert found("sure_thing") == {runs["plain"].pk}


def test_the_list_search_finds_non_ascii_input(client, runs):
    client.force_login(make_viewer())
    for term, key in (("李雷", "chinese"), (EMOJI, "emoji"), ("ünïcode", "unicode")):
        page = client.get("/", {"q": term}).context["page"]
        assert [run.pk for run in page.runs] == [runs[key].pk], term


def test_the_filter_forms_search_is_the_same(runs):
    matching = RunFilterForm({"q": "straße"}).runs()
    assert list(matching.values_list("pk", flat=True)) == [runs["output"].pk]


def test_fold_decodes_escapes_stored_by_older_writes():
    assert fold('{"name": "\\u674e\\u96f7 \\ud83d\\ude80 \\u00dc"}') == '{"name": "李雷 🚀 ü"}'
    assert fold("\\u12") == "\\u12"  # not an escape: left alone
    assert fold(None) is None
