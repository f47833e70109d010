"""Errors leave a trace: tracebacks on stderr in every configuration, and Sentry when asked."""

import io
import logging
import os
import subprocess
import sys

import pytest
import sentry_sdk


def configured_stderr_handler(logger: str) -> logging.StreamHandler:
    """The stream handler that LOGGING gives `logger`, its own or an ancestor's."""
    current: logging.Logger | None = logging.getLogger(logger)
    while current is not None:
        for handler in current.handlers:
            if type(handler) is logging.StreamHandler:
                return handler
        current = current.parent if current.propagate else None
    raise AssertionError(f"no stream handler reaches {logger}")


@pytest.mark.django_db
@pytest.mark.urls("tests.urls_boom")
def test_a_server_error_is_logged_with_its_traceback_with_debug_off(client, settings):
    settings.DEBUG = False
    client.raise_request_exception = False
    handler = configured_stderr_handler("django.request")
    assert handler.stream is sys.stderr or handler.stream.name == "<stderr>"
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        response = client.get("/boom/")
    finally:
        handler.setStream(previous)
    assert response.status_code == 500
    logged = buffer.getvalue()
    assert "ERROR django.request" in logged
    assert "Traceback (most recent call last)" in logged
    assert "RuntimeError: boom, for the log" in logged


@pytest.mark.django_db
def test_client_errors_are_left_to_the_access_log(client):
    handler = configured_stderr_handler("django.request")
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        assert client.get("/no/such/page/").status_code in (302, 404)
    finally:
        handler.setStream(previous)
    assert buffer.getvalue() == ""


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        timeout=60,
    )


def test_task_failures_and_engine_and_agent_warnings_reach_stderr_with_debug_off():
    result = run_python(
        "import logging\n"
        "logging.getLogger('runs.engine').warning('an engine warning')\n"
        "logging.getLogger('agentkit.llm').warning('an agents warning')\n"
        "from config.celery import app\n"
        "@app.task(name='tests.fail')\n"
        "def fail():\n"
        "    raise ValueError('the task failed')\n"
        "fail.apply()\n",
        DEBUG="false",
    )
    assert "WARNING runs.engine" in result.stderr and "an engine warning" in result.stderr
    assert "WARNING agentkit.llm" in result.stderr and "an agents warning" in result.stderr
    assert "ERROR celery.app.trace" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: the task failed" in result.stderr


def test_a_malformed_log_level_stops_the_start():
    result = run_python("", DURABLE_LOG_LEVEL="LOUD")
    assert result.returncode != 0
    assert "DURABLE_LOG_LEVEL='LOUD'" in result.stderr


# --- Sentry ---------------------------------------------------------------------------------


def test_without_a_dsn_sentry_is_not_initialised():
    assert not sentry_sdk.get_client().is_active()
    result = run_python("import sentry_sdk; print(sentry_sdk.get_client().is_active())")
    assert result.stdout.strip() == "False", result.stderr


def test_with_a_dsn_sentry_reports_django_and_celery_errors():
    # A DSN on the loopback interface: nothing is sent anyway (no event is raised), and
    # nothing could leave the machine if it were.
    result = run_python(
        "import sentry_sdk\n"
        "client = sentry_sdk.get_client()\n"
        "print(client.is_active(), client.options['environment'], client.options['send_default_pii'])\n"
        "print(sorted(client.integrations))\n",
        SENTRY_DSN="https://key@127.0.0.1:9/1",
        SENTRY_ENVIRONMENT="staging",
    )
    assert result.returncode == 0, result.stderr
    active, integrations = result.stdout.strip().splitlines()
    assert active == "True staging False"
    assert "'celery'" in integrations and "'django'" in integrations


def test_sentry_events_are_redacted_like_stored_errors(settings):
    from config.sentry import before_send

    settings.OPENAI_API_KEY = "sk-live-0123456789abcdef"
    error = {"type": "AuthenticationError", "value": "bad key sk-live-0123456789abcdef"}
    event = {
        "exception": {"values": [error]},
        "logentry": {"message": "sent Authorization: Bearer abcdefghijkl"},
    }
    scrubbed = before_send(event, {})
    assert scrubbed["exception"]["values"][0]["value"] == "bad key [redacted]"
    assert scrubbed["logentry"]["message"] == "sent Authorization: [redacted]"
