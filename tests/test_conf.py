"""runs.conf: every setting the apps read has a default, and a wrong one is refused by name."""

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from runs import conf

REPO = Path(__file__).resolve().parent.parent
PACKAGED = ["runs", "steps", "agentkit", "api", "schedules", "notifications"]


def defaults(**changes) -> SimpleNamespace:
    settings = SimpleNamespace(**changes)
    conf.apply_defaults(settings)
    return settings


def test_it_declares_every_durable_and_agents_setting_the_apps_read():
    read = set()
    for app in PACKAGED:
        for path in (REPO / app).rglob("*.py"):
            read |= set(re.findall(r"settings\.((?:DURABLE|AGENTS)_[A-Z_]+)", path.read_text()))
    assert read, "the apps read no DURABLE_* settings?"
    assert read - set(conf.DEFAULTS) == set()


def test_it_fills_in_only_what_the_project_left_out():
    settings = defaults(DURABLE_LEASE_TIMEOUT=5.0, DURABLE_QUEUE="agents")
    assert settings.DURABLE_LEASE_TIMEOUT == 5.0
    assert settings.DURABLE_HEARTBEAT_INTERVAL == 0.5
    assert settings.DURABLE_QUEUES == ["agents"]  # the queue runs go to, unless listed
    assert settings.DURABLE_WORKFLOW_MODULES == []
    assert conf.problems(settings) == []


def test_defaults_are_fresh_copies():
    first, second = defaults(), defaults()
    first.DURABLE_REDACT_VALUES.append("secret")
    assert second.DURABLE_REDACT_VALUES == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DURABLE_LEASE_TIMEOUT": "2"}, "DURABLE_LEASE_TIMEOUT='2' is not a number"),
        ({"DURABLE_MAX_RECOVERIES": 0}, "DURABLE_MAX_RECOVERIES=0 must be at least 1"),
        ({"DURABLE_MAX_RECOVERIES": 2.5}, "DURABLE_MAX_RECOVERIES=2.5 is not a whole number"),
        ({"DURABLE_JSON_MAX_DEPTH": 500}, "DURABLE_JSON_MAX_DEPTH=500 must be at most 200"),
        ({"DURABLE_HEARTBEAT_THREAD": "yes"}, "DURABLE_HEARTBEAT_THREAD='yes' is not True or False"),
        ({"DURABLE_WORKFLOW_MODULES": "shop.workflows"}, "is not a list of strings"),
        ({"DURABLE_PRUNE_STATUSES": ["running"]}, "only finished statuses can be pruned"),
        ({"DURABLE_PRUNE_OLDER_THAN": 30}, "is not a datetime.timedelta"),
        ({"AGENTS_LLM_PROVIDER": "gemini"}, "use one of auto, fake, openai, anthropic"),
        ({"AGENTS_LLM_PROVIDER": "openai"}, "AGENTS_LLM_PROVIDER=openai needs OPENAI_API_KEY"),
        (
            {"DURABLE_LEASE_TIMEOUT": 0.4},
            "DURABLE_LEASE_TIMEOUT must be longer than DURABLE_HEARTBEAT_INTERVAL",
        ),
        (
            {"DURABLE_PRUNE_OLDER_THAN": timedelta(days=90), "DURABLE_BILLING_RETENTION": timedelta(days=30)},
            "DURABLE_BILLING_RETENTION must be at least DURABLE_PRUNE_OLDER_THAN",
        ),
        (
            {"DURABLE_METRICS_ALLOWED_IPS": ["10.0.0.0/8", "office"]},
            "'office' is not an IP address or network",
        ),
    ],
)
def test_it_refuses_a_wrong_setting_by_name(changes, message):
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        conf.validate(defaults(**changes))


def test_beat_schedule_names_the_engines_periodic_tasks():
    tasks = {entry["task"] for entry in conf.BEAT_SCHEDULE.values()}
    assert tasks == {"notifications.scan", "schedules.fire_due", "runs.prune", "agents.prune_billing"}
    off = conf.beat_schedule(prune_every=None, prune_billing_every=None)
    assert set(off) == {"durable-notifications", "durable-schedules"}


def test_the_standalone_project_passes_the_project_checks():
    assert conf.check_project() == []


def test_it_names_what_a_project_forgot_to_add(settings):
    middleware = [m for m in settings.MIDDLEWARE if "htmx" not in m]
    templates = [{**settings.TEMPLATES[0], "OPTIONS": {"context_processors": []}}]
    with override_settings(MIDDLEWARE=middleware, TEMPLATES=templates):
        errors = {(error.id, error.msg.split("'")[1]) for error in conf.check_project()}
    assert ("runs.E002", "django_htmx.middleware.HtmxMiddleware") in errors
    assert ("runs.E003", "runs.views.inbox.navigation") in errors
