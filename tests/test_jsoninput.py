"""One JSON parser for every door: size and depth limits, clear messages, and values
passed from code checked where they are stored."""

import json

import pytest

from runs import jsoninput
from runs.jsoninput import JSONInputError
from runs.models import InvalidOperation, Run, Signal, Status, ensure_json
from runs.workflow import step, workflow
from steps.models import Checkpoint
from tests.factories import make_failed_run, make_waiting_run


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_value(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


# --- parsing text -------------------------------------------------------------------------


def test_it_parses_json_up_to_the_depth_limit():
    assert jsoninput.parse(nested(64)) == nested_value(64)
    assert jsoninput.parse('{"a": ' * 64 + "1" + "}" * 64)


@pytest.mark.parametrize("depth", [65, 990, 100_000])
def test_it_refuses_deeper_json_naming_the_limit(depth):
    with pytest.raises(JSONInputError, match="nested deeper than 64 levels"):
        jsoninput.parse(nested(depth))


def test_unclosed_nesting_is_refused_by_depth_not_recursion():
    with pytest.raises(JSONInputError, match="nested deeper than 64"):
        jsoninput.parse("[" * 50_000)


def test_brackets_inside_strings_are_not_nesting():
    text = json.dumps({"text": "[" * 500 + '\\" {{{' + "]" * 10})
    assert jsoninput.parse(text)["text"].startswith("[[[")


def test_the_depth_limit_is_a_setting(settings):
    settings.DURABLE_JSON_MAX_DEPTH = 3
    assert jsoninput.parse(nested(3)) == nested_value(3)
    with pytest.raises(JSONInputError, match="deeper than 3 levels"):
        jsoninput.parse(nested(4))


def test_it_refuses_text_over_the_size_limit_naming_it(settings):
    settings.DURABLE_JSON_MAX_BYTES = 100
    assert jsoninput.parse('"' + "x" * 98 + '"') == "x" * 98
    with pytest.raises(JSONInputError, match="JSON is longer than 100 bytes, the most accepted"):
        jsoninput.parse('"' + "x" * 99 + '"')
    # Bytes, not characters: 34 three-byte characters are 102 bytes.
    with pytest.raises(JSONInputError, match="longer than 100 bytes"):
        jsoninput.parse('"' + "€" * 34 + '"')


def test_the_default_size_limit_is_a_mebibyte():
    big = '"' + "x" * (1024 * 1024 - 2) + '"'
    assert len(jsoninput.parse(big)) == 1024 * 1024 - 2
    with pytest.raises(JSONInputError, match="1,048,576 bytes"):
        jsoninput.parse(big + " ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{x", "This is not valid JSON"),
        ("NaN", "NaN is not allowed"),
        ("[1, -Infinity]", "-Infinity is not allowed"),
        ("1e999", "not finite"),
        ('"a\\u0000b"', "NUL character"),
        ('{"\\u0000": 1}', "NUL character"),
        ('"\\ud800"', "lone surrogate"),
        (b'"\xff"', "not UTF-8"),
    ],
)
def test_it_refuses_what_a_database_cannot_store(text, message):
    with pytest.raises(JSONInputError, match=message):
        jsoninput.parse(text)


def test_the_api_checks_values_per_field_instead():
    assert jsoninput.parse('{"input": 1e999}', check=False) == {"input": float("inf")}


# --- values from code ---------------------------------------------------------------------


def test_ensure_json_refuses_deep_values_from_code():
    assert ensure_json(nested_value(64), "x") == nested_value(64)
    with pytest.raises(ValueError, match="x is nested deeper than 64 levels"):
        ensure_json(nested_value(65), "x")
    with pytest.raises(ValueError, match="nested deeper"):
        ensure_json(nested_value(5000), "x")  # deeper than the standard encoder goes


def test_ensure_json_refuses_lone_surrogates():
    with pytest.raises(ValueError, match="lone surrogate"):
        ensure_json({"text": "\ud800"}, "x")


@pytest.mark.django_db
def test_starting_a_run_with_deep_input_from_code_is_refused(doorbells):
    import tests.workflows  # noqa: F401

    with pytest.raises(ValueError, match="run input is nested deeper than 64"):
        Run.objects.start("arithmetic", nested_value(900))
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_signal_as_deep_as_the_limit_is_accepted_and_audited():
    run = make_waiting_run()
    run.send_signal("approve", nested_value(64))
    assert Signal.objects.get().payload == nested_value(64)


@pytest.mark.django_db
def test_a_deep_signal_or_edit_from_code_is_refused_and_changes_nothing():
    waiting = make_waiting_run()
    with pytest.raises(InvalidOperation, match="signal payload is nested deeper"):
        waiting.send_signal("approve", nested_value(900))
    assert not Signal.objects.exists()

    failed = make_failed_run(steps=2)
    with pytest.raises(InvalidOperation, match="checkpoint output is nested deeper"):
        failed.edit_checkpoint(0, nested_value(100))
    assert Checkpoint.objects.filter(run=failed).count() == 2
    assert Run.objects.get(pk=failed.pk).status == Status.FAILED


@step
def deep_step():
    return nested_value(200)


@workflow("deep_output")
def deep_output(ctx, data):
    return ctx.step(deep_step)


@pytest.mark.django_db(transaction=True)
def test_a_step_returning_a_deep_value_fails_with_a_clear_error(doorbells):
    run = Run.objects.start("deep_output", {})
    doorbells.drain()
    run.refresh_from_db()
    assert run.status == Status.FAILED
    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.error_type == "StepOutputError"
    assert "nested deeper than 64 levels" in checkpoint.error_message


# --- showing stored JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, 1, -0.5, "x\"'<", [], {}, {"a": [1, {"b": None, "c": True}], "é": "ü"}, [[1, 2], [3]], {"1": 2}],
)
def test_flat_writes_what_json_dumps_writes(value):
    assert jsoninput.flat(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_flat_writes_any_depth_and_stops_at_the_cap():
    deep = nested_value(5000)
    assert jsoninput.flat(deep) == nested(5000)
    assert jsoninput.flat(deep, cap=10) == "[" * 10


def test_render_falls_back_to_raw_text_when_a_value_is_too_deep_to_format():
    assert jsoninput.render({"a": 1}, indent=2) == ('{\n  "a": 1\n}', True)
    text, formatted = jsoninput.render(nested_value(5000), indent=2, cap=100)
    assert (text, formatted) == ("[" * 100, False)


# --- the message at every door ------------------------------------------------------------

DEEP_TEXT = nested(990)


@pytest.mark.django_db
def test_every_door_names_the_limit(client, admin_client, settings):
    from django.core.management import CommandError, call_command

    from tests.factories import make_operator

    settings.DURABLE_JSON_MAX_BYTES = 5000
    waiting = make_waiting_run()
    failed = make_failed_run(steps=2)
    client.force_login(make_operator("olga"))

    signal = client.post(
        f"/runs/{waiting.pk}/signal/", {"name": "go", "payload": DEEP_TEXT, "confirmed": "yes"}
    )
    assert signal.status_code == 422
    assert "nested deeper than 64 levels" in signal.content.decode()
    edit = client.post(
        f"/runs/{failed.pk}/steps/0/edit/", {"output": "[" + "1," * 5000 + "1]", "confirmed": "yes"}
    )
    assert edit.status_code == 422
    assert "longer than 5,000 bytes" in edit.content.decode()

    checkpoint = Checkpoint.objects.live().get(run=failed, position=0)
    admin = admin_client.post(f"/admin/steps/checkpoint/{checkpoint.pk}/change/", {"output": DEEP_TEXT})
    assert admin.status_code == 200
    assert "nested deeper than 64 levels" in admin.content.decode()

    api = client.post(
        f"/api/runs/{waiting.pk}/signal/",
        '{"name": "go", "payload": ' + DEEP_TEXT + "}",
        content_type="application/json",
    )
    assert api.status_code == 400
    assert "nested deeper than 64 levels" in api.json()["detail"]

    with pytest.raises(CommandError, match="nested deeper than 64 levels"):
        call_command("runs", "signal", str(waiting.pk), "go", "--payload", DEEP_TEXT)
    assert not Signal.objects.exists()
    assert Run.objects.get(pk=failed.pk).status == Status.FAILED
