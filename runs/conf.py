"""Every setting the apps read, with its default and its rule, in one place.

A project that installs the apps sets only what differs from these defaults. RunsConfig
applies them to django.conf.settings as the app registry starts, before any model is
imported, so every read of a DURABLE_* setting finds a value; at ready() `validate` refuses
a wrong type or range with ImproperlyConfigured naming the setting. The standalone project
(config/settings.py) reads the same names from the environment and takes its defaults
from here. Nothing here imports Django's settings: config/settings.py imports this module.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured

FINISHED_STATUSES = ("succeeded", "failed", "dead", "cancelled")
LLM_PROVIDERS = ("auto", "fake", "openai", "anthropic")
FAKE_FAILURE_MODES = ("timeout", "rate_limit", "malformed")

# Estimated cost of model calls: US dollars per million input and output tokens, per model.
# A dated snapshot ("gpt-4o-mini-2024-07-18") takes the price of the longest name it starts with.
PRICES = {
    "fake-1": {"input": 0.50, "output": 1.50},  # pretend prices, so offline demos show costs
    "gpt-5": {"input": 1.25, "output": 10.00},
    "gpt-5-mini": {"input": 0.25, "output": 2.00},
    "gpt-5-nano": {"input": 0.05, "output": 0.40},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "claude-haiku-4-5": {"input": 1.00, "output": 5.00},
    "claude-sonnet-4-5": {"input": 3.00, "output": 15.00},
    "claude-opus-4-5": {"input": 5.00, "output": 25.00},
}


@dataclass(frozen=True)
class Setting:
    default: Any
    doc: str
    kind: str  # number, whole, flag, text, names, limits, duration, prices
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)


def number(default, doc, minimum=0.0, maximum=None) -> Setting:
    return Setting(default, doc, "number", minimum, maximum)


def whole(default, doc, minimum=0, maximum=None) -> Setting:
    return Setting(default, doc, "whole", minimum, maximum)


DEFAULTS: dict[str, Setting] = {
    # --- the engine and its workers
    "DURABLE_WORKFLOW_MODULES": Setting([], "modules whose import registers workflows", "names"),
    "DURABLE_QUEUE": Setting("durable", "the queue runs go to unless their workflow names another", "text"),
    "DURABLE_QUEUES": Setting(
        None, "the queues workers consume; runs on others are refused (default: [DURABLE_QUEUE])", "names"
    ),
    "DURABLE_HEARTBEAT_INTERVAL": number(0.5, "seconds between a worker process's proofs of life", 0.05),
    "DURABLE_LEASE_TIMEOUT": number(2.0, "seconds of silence after which a worker's runs are recovered", 0.1),
    "DURABLE_HEARTBEAT_THREAD": Setting(
        True, "beat from a thread in each worker (tests driving the engine in-process turn it off)", "flag"
    ),
    "DURABLE_SWEEP_INTERVAL": number(
        0.5, "seconds between sweeps (lapsed leases, due wake-ups, lost messages)", 0.05
    ),
    "DURABLE_REDISPATCH_AFTER": number(
        15.0, "seconds before an unanswered pending run's doorbell rings again", 0.1
    ),
    "DURABLE_MAX_RECOVERIES": whole(5, "crash recoveries before a run is dead-lettered", 1),
    "DURABLE_CONCURRENCY": Setting(
        {}, "per-workflow concurrency limits {name: N}, over @workflow(concurrency=)", "limits"
    ),
    "DURABLE_RATE_LIMITS": Setting(
        {}, "shared rate limits {key: (calls, seconds)}, over RateLimit(...)", "limits"
    ),
    "DURABLE_MAX_STEP_SECONDS": number(
        3600.0, "longest a step runs without a timeout of its own (0: no limit)"
    ),
    "DURABLE_KILL_GRACE": number(
        30.0, "seconds after a step timeout before its stuck pool process is killed"
    ),
    "DURABLE_PINNED_RETRY_SECONDS": number(
        60.0, "wait before a run pinned to an unknown version is dispatched again", 0.1
    ),
    "DURABLE_DELIVERY_SECONDS": number(
        300.0, "longest one delivery executes a run before handing it back", 0.01
    ),
    "DURABLE_RUNS_PER_PROCESS": whole(8, "runs one prefork pool process executes at once, on threads", 1),
    "DURABLE_MAINTENANCE_LOCK_TIMEOUT": number(0.2, "seconds maintenance waits on a row lock", 0.001),
    "DURABLE_MAINTENANCE_STATEMENT_TIMEOUT": number(10.0, "seconds one maintenance statement may take", 0.01),
    # --- what people and clients send, and what is kept
    "DURABLE_JSON_MAX_BYTES": whole(1024 * 1024, "largest JSON text accepted from people and clients", 1),
    "DURABLE_JSON_MAX_DEPTH": whole(64, "deepest nesting of a stored JSON value", 1, 200),
    "DURABLE_STEP_INPUT_BYTES": whole(
        16 * 1024, "a step's arguments are kept up to this many bytes, else a digest"
    ),
    "DURABLE_REDACT_VALUES": Setting(
        [], "values replaced by [redacted] in stored errors and model calls", "names"
    ),
    "DURABLE_PRUNE_OLDER_THAN": Setting(
        None, "beat deletes finished runs older than this (None: never)", "duration"
    ),
    "DURABLE_PRUNE_INTERVAL": Setting(
        timedelta(hours=1), "how often the standalone project's beat prunes", "duration"
    ),
    "DURABLE_PRUNE_STATUSES": Setting(
        ["succeeded", "cancelled"], "statuses pruning deletes", "names", choices=FINISHED_STATUSES
    ),
    "DURABLE_PRUNE_BATCH_SIZE": whole(500, "runs deleted per transaction by pruning", 1),
    "DURABLE_BILLING_RETENTION": Setting(
        None, "beat deletes provider calls older than this (None: kept for ever)", "duration"
    ),
    # --- the dashboard, the API, notifications
    "DURABLE_REMEMBER_SECONDS": whole(14 * 24 * 3600, "session length with 'stay signed in' ticked", 60),
    "DURABLE_API_ANON_RATE": Setting(
        "60/min", "API requests one address may make without signing in", "text"
    ),
    "DURABLE_API_USER_RATE": Setting("1200/min", "API requests one signed-in user may make", "text"),
    "DURABLE_TOKEN_FAILURE_LIMIT": whole(10, "wrong API tokens from one address per minute before 429", 1),
    "DURABLE_METRICS_TOKEN": Setting("", "bearer token that /metrics answers", "text"),
    "DURABLE_METRICS_ALLOWED_IPS": Setting([], "addresses or networks that /metrics answers", "names"),
    "DURABLE_METRICS_CACHE_SECONDS": number(
        10.0, "a scrape this soon after the last is answered from memory"
    ),
    "DURABLE_METRICS_SETTLE_SECONDS": number(60.0, "rows this old are added to the counters' stored totals"),
    "DURABLE_NOTIFY_POLL_SECONDS": number(
        10.0, "how often the standalone project's beat scans for notifications", 0.1
    ),
    "DURABLE_NOTIFY_LOOKBACK_HOURS": number(24.0, "notifications consider runs changed this recently", 0.01),
    "DURABLE_SCHEDULE_POLL_SECONDS": number(10.0, "how often beat looks for due schedule ticks", 0.1),
    "DURABLE_BASE_URL": Setting(
        "", "start of the links in notifications, e.g. https://runs.example.com", "text"
    ),
    # --- the agent toolkit (agentkit/): model providers, prices, the offline fake and demo faults
    "AGENTS_LLM_PROVIDER": Setting(
        "auto", "fake, openai, anthropic, or auto (first key set, else fake)", "text", choices=LLM_PROVIDERS
    ),
    "OPENAI_API_KEY": Setting("", "OpenAI's API key", "text"),
    "ANTHROPIC_API_KEY": Setting("", "Anthropic's API key", "text"),
    "AGENTS_FAKE_MODEL": Setting("fake-1", "the fake provider's model name", "text"),
    "AGENTS_OPENAI_MODEL": Setting("gpt-5-mini", "OpenAI model when a workflow names none", "text"),
    "AGENTS_ANTHROPIC_MODEL": Setting(
        "claude-haiku-4-5", "Anthropic model when a workflow names none", "text"
    ),
    "AGENTS_LLM_TIMEOUT": number(60.0, "seconds one model request may take", 0.1),
    "AGENTS_LLM_MAX_ATTEMPTS": whole(5, "attempts per model call", 1),
    "AGENTS_LLM_MAX_TOKENS": whole(1024, "most tokens a model reply may have", 1),
    "AGENTS_PRICES": Setting(PRICES, "US dollars per million input and output tokens, per model", "prices"),
    "AGENTS_FAKE_LATENCY": number(0.0, "seconds each fake reply takes"),
    "AGENTS_FAKE_FAILURE_RATE": number(0.0, "share of fake calls that fail", 0.0, 1.0),
    "AGENTS_FAKE_FAILURE_MODES": Setting(
        list(FAKE_FAILURE_MODES), "how fake calls fail", "names", choices=FAKE_FAILURE_MODES
    ),
    "AGENTS_PAYMENT_FAILURE_RATE": number(
        0.3, "share of the demo payment API's requests that time out", 0.0, 1.0
    ),
    "AGENTS_PAYMENT_TIMEOUTS_PER_KEY": whole(0, "demo payment timeouts per idempotency key before an answer"),
    "AGENTS_CRASH_AT_STEP": whole(-1, "a demo run's worker kills itself at this step (-1: off)", -1),
    "AGENTS_PAUSE_AT_STEP": whole(-1, "a demo run pauses at this step (-1: off)", -1),
    "AGENTS_PAUSE_SECONDS": number(60.0, "how long that pause lasts"),
}


def default(name: str) -> Any:
    """The documented default of one setting (a fresh copy of lists and dicts)."""
    value = DEFAULTS[name].default
    return type(value)(value) if isinstance(value, list | dict) else value


def apply_defaults(settings) -> None:
    """Give every setting the project left out its default."""
    for name in DEFAULTS:
        if not hasattr(settings, name):
            setattr(settings, name, default(name))
    if settings.DURABLE_QUEUES is None:
        settings.DURABLE_QUEUES = [settings.DURABLE_QUEUE]


def problems(settings) -> list[str]:
    """What is wrong with the settings, one sentence per setting."""
    found = [p for name, spec in DEFAULTS.items() if (p := _problem(name, spec, getattr(settings, name)))]
    if found:
        return found
    if settings.DURABLE_LEASE_TIMEOUT <= settings.DURABLE_HEARTBEAT_INTERVAL:
        found.append("DURABLE_LEASE_TIMEOUT must be longer than DURABLE_HEARTBEAT_INTERVAL")
    provider = settings.AGENTS_LLM_PROVIDER
    if provider in ("openai", "anthropic") and not getattr(settings, f"{provider.upper()}_API_KEY"):
        found.append(f"AGENTS_LLM_PROVIDER={provider} needs {provider.upper()}_API_KEY")
    pruned, billed = settings.DURABLE_PRUNE_OLDER_THAN, settings.DURABLE_BILLING_RETENTION
    if pruned is not None and billed is not None and billed < pruned:
        found.append(
            "DURABLE_BILLING_RETENTION must be at least DURABLE_PRUNE_OLDER_THAN: "
            "runs still shown would lose their cost"
        )
    interval = settings.DURABLE_PRUNE_INTERVAL
    if (pruned is not None or billed is not None) and (interval is None or interval <= timedelta(0)):
        found.append("DURABLE_PRUNE_INTERVAL must be longer than zero")
    for network in settings.DURABLE_METRICS_ALLOWED_IPS:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            found.append(f"DURABLE_METRICS_ALLOWED_IPS: {network!r} is not an IP address or network")
    return found


def validate(settings) -> None:
    if found := problems(settings):
        raise ImproperlyConfigured("; ".join(found))


def _problem(name: str, spec: Setting, value: Any) -> str | None:
    shown = f"{name}={value!r}"
    if spec.kind in ("number", "whole"):
        allowed = int if spec.kind == "whole" else int | float
        if isinstance(value, bool) or not isinstance(value, allowed):
            return f"{shown} is not a {'whole number' if spec.kind == 'whole' else 'number'}"
        if spec.minimum is not None and value < spec.minimum:
            return f"{shown} must be at least {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"{shown} must be at most {spec.maximum}"
    elif spec.kind == "flag" and not isinstance(value, bool):
        return f"{shown} is not True or False"
    elif spec.kind == "text":
        if not isinstance(value, str):
            return f"{shown} is not a string"
        if spec.choices and value not in spec.choices:
            return f"{shown}: use one of {', '.join(spec.choices)}"
    elif spec.kind == "names":
        if value is None and spec.default is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            return f"{shown} is not a list of strings"
        if spec.choices and (unknown := set(value) - set(spec.choices)):
            return f"{name}: {', '.join(sorted(unknown))} not among {', '.join(spec.choices)}" + (
                ": only finished statuses can be pruned" if name == "DURABLE_PRUNE_STATUSES" else ""
            )
    elif spec.kind in ("limits", "prices") and not isinstance(value, dict):
        return f"{shown} is not a dict"
    elif spec.kind == "duration" and value is not None and not isinstance(value, timedelta):
        return f"{shown} is not a datetime.timedelta (or None)"
    return None


# Celery beat's entries for a project's CELERY_BEAT_SCHEDULE (or app.conf.beat_schedule):
# merge them as they are. The pruning tasks do nothing until their DURABLE_* setting is set.
# A call that could not start before the next one is due is dropped: the next one does it.
def beat_schedule(
    notify_every: float = DEFAULTS["DURABLE_NOTIFY_POLL_SECONDS"].default,
    schedules_every: float = DEFAULTS["DURABLE_SCHEDULE_POLL_SECONDS"].default,
    prune_every: timedelta | None = DEFAULTS["DURABLE_PRUNE_INTERVAL"].default,
    prune_billing_every: timedelta | None = DEFAULTS["DURABLE_PRUNE_INTERVAL"].default,
) -> dict[str, dict]:
    entries = {
        "durable-notifications": {"task": "notifications.scan", "schedule": notify_every},
        "durable-schedules": {"task": "schedules.fire_due", "schedule": schedules_every},
        "durable-prune": {"task": "runs.prune", "schedule": prune_every},
        "durable-prune-billing": {"task": "agents.prune_billing", "schedule": prune_billing_every},
    }
    for entry in entries.values():
        every = entry["schedule"]
        entry["options"] = {"expires": every.total_seconds() if isinstance(every, timedelta) else every}
    return {name: entry for name, entry in entries.items() if entry["schedule"] is not None}


BEAT_SCHEDULE = beat_schedule()

# What a project's settings need besides INSTALLED_APPS, checked by `check_project`.
MIDDLEWARE = ["django_htmx.middleware.HtmxMiddleware"]
CONTEXT_PROCESSORS = [
    "django.template.context_processors.request",
    "django.contrib.auth.context_processors.auth",
    "django.contrib.messages.context_processors.messages",
    "runs.views.inbox.navigation",
]
REQUIRED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "runs",
    "steps",
    "schedules",
    "notifications",
    "agentkit",
    "api",
]


def check_project(app_configs=None, **kwargs) -> list:
    """A project that installs the dashboard: the apps, middleware and context processors it needs."""
    from django.apps import apps
    from django.conf import settings
    from django.core import checks

    errors = [
        checks.Error(f"INSTALLED_APPS lacks {name!r}, which the dashboard needs", id="runs.E001")
        for name in REQUIRED_APPS
        if not apps.is_installed(name)
    ]
    errors += [
        checks.Error(f"MIDDLEWARE lacks {name!r}: the dashboard's views read request.htmx", id="runs.E002")
        for name in MIDDLEWARE
        if name not in settings.MIDDLEWARE
    ]
    django_templates = [t for t in settings.TEMPLATES if t["BACKEND"].endswith("DjangoTemplates")]
    processors = {p for t in django_templates for p in t.get("OPTIONS", {}).get("context_processors", [])}
    errors += [
        checks.Error(
            f"TEMPLATES: the context processors lack {name!r}, which the dashboard's pages use",
            id="runs.E003",
        )
        for name in CONTEXT_PROCESSORS
        if name not in processors
    ]
    return errors
