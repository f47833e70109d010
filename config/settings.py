"""One settings module for every environment, driven by environment variables.

With nothing set, the product runs on an embedded default that needs no server:
SQLite (WAL) for the database and kombu's filesystem transport for the broker.
Production names PostgreSQL and Redis or RabbitMQ through DATABASE_URL and
CELERY_BROKER_URL.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from runs import conf
from runs.broker import transport_options

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DURABLE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def from_conf(name: str, default, minimum, floor):
    """DURABLE_* and AGENTS_* settings take their defaults and minimums from runs.conf."""
    spec = conf.DEFAULTS.get(name)
    if default is None and spec is not None:
        default = conf.default(name)
    if minimum is None:
        minimum = spec.minimum if spec is not None and spec.minimum is not None else floor
    return default, minimum


def envbool(name: str, default: bool | None = None) -> bool:
    default, _ = from_conf(name, default, None, None)
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def envint(name: str, default: int | None = None, minimum: int | None = None) -> int:
    default, minimum = from_conf(name, default, minimum, 0)
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}")
    return number


def envfloat(name: str, default: float | None = None, minimum: float | None = None) -> float:
    default, minimum = from_conf(name, default, minimum, 0.0)
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}")
    return number


def envlist(name: str, default: list[str] | None = None) -> list[str]:
    default, _ = from_conf(name, default, None, None)
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def database_from_env() -> dict:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    try:
        config = dj_database_url.parse(url)
    except Exception as exc:  # dj-database-url raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL={url!r} is not a valid database URL: {exc}") from None
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        if not config.get("NAME"):
            raise ImproperlyConfigured(f"DATABASE_URL={url!r} names no SQLite file")
        config["OPTIONS"] = {
            # BEGIN IMMEDIATE: a transaction that reads then writes waits for the
            # lock instead of failing with "database is locked" on upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # A file, not memory, so real worker processes in the tests can share it; one
        # per test process, so two test sessions on one machine never collide.
        config["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    elif engine == "django.db.backends.postgresql":
        config["CONN_MAX_AGE"] = envint("DATABASE_CONN_MAX_AGE", 60)
        config["CONN_HEALTH_CHECKS"] = True
        idle_in_transaction = envfloat("DURABLE_DB_IDLE_IN_TRANSACTION_TIMEOUT", 60.0, minimum=0)
        lock_wait = envfloat("DURABLE_DB_LOCK_TIMEOUT", 10.0, minimum=0)
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            # A partitioned peer's session dies within ~30 s (10 s idle, then 4 probes 5 s
            # apart) instead of when TCP gives up, hours later, releasing its locks.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 4,
            "tcp_user_timeout": 30_000,
            # A frozen worker (SIGSTOP, a paused VM) inside a transaction loses the
            # transaction, and its row locks, after this long; and no statement waits on a
            # lock for longer than DURABLE_DB_LOCK_TIMEOUT (0 turns either off).
            "options": (
                f"-c idle_in_transaction_session_timeout={int(idle_in_transaction * 1000)} "
                f"-c lock_timeout={int(lock_wait * 1000)}"
            ),
        }
        config["TEST"] = {"NAME": f"test_{config['NAME']}_{os.getpid()}"}
    else:
        raise ImproperlyConfigured(
            f"DATABASE_URL={url!r}: only sqlite:// and postgres:// databases are supported"
        )
    return config


def local_secret_key(path: Path) -> str:
    """A random key made on first start and kept in `path` (mode 0600), for an
    installation on one machine; concurrent first starts agree on one key."""
    try:
        if key := path.read_text().strip():
            return key
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImproperlyConfigured(f"cannot read {path}: {exc}; set SECRET_KEY") from None
    candidate = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(50) + "\n")
    try:
        os.link(candidate, path)  # atomic, and refuses to replace: the first start wins
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return path.read_text().strip()


DEBUG = envbool("DEBUG", False)
# The embedded default answers on localhost only; an installation that names its hosts
# (ALLOWED_HOSTS) is a deployment and must be given its SECRET_KEY, the same on every
# machine. Without one a deployment does not start (unless DEBUG is on); the embedded
# default makes a random key once and keeps it in DURABLE_VAR_DIR/secret_key.
# DURABLE_REQUIRE_SECRET_KEY=true refuses to start without SECRET_KEY in any case.
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    deployed = bool(os.environ.get("ALLOWED_HOSTS", "").strip())
    if envbool("DURABLE_REQUIRE_SECRET_KEY", False) or (deployed and not DEBUG):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set: a long random value, the same for every process of the "
            "installation (python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    SECRET_KEY = local_secret_key(VAR_DIR / "secret_key")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from what
# clients send): DURABLE_HTTPS=true makes cookies HTTPS-only, redirects plain HTTP, and
# sends HSTS. Never turn it on where clients can reach the app without that proxy: they
# could then claim HTTPS with the header themselves.
DURABLE_HTTPS = envbool("DURABLE_HTTPS", False)
if DURABLE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("DURABLE_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DURABLE_HSTS_INCLUDE_SUBDOMAINS", True)
    # Submitting the domain to browsers' preload lists is its owner's decision, made
    # once for every subdomain: off unless asked for, and check --deploy is told so.
    SECURE_HSTS_PRELOAD = envbool("DURABLE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
# /metrics and the health checks of load balancers may come over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]

# Sessions end when the browser closes, and after 12 hours in any case, unless the user
# ticks "stay signed in" at login (runs.accounts): then they last 14 days.
SESSION_COOKIE_AGE = envint("DURABLE_SESSION_SECONDS", 12 * 3600, minimum=60)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
DURABLE_REMEMBER_SECONDS = envint("DURABLE_REMEMBER_SECONDS")

INSTALLED_APPS = [
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
    "drf_spectacular",
    "csp",
    "axes",
    "runs",
    "steps",
    "schedules",
    "notifications",
    "harness",
    "agentkit",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Times on the dashboard in the viewer's zone (the browser's, from a cookie).
    "runs.viewer_zone.ViewerTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it answers a locked-out sign-in with 429.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy on every response: scripts, styles and everything else from
# this origin only; no inline script, event handler or style attribute anywhere (htmx's
# indicator styles are in app.css), no eval, no framing. `data:` images: the favicon.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "runs.views.inbox.navigation",
            ],
        },
    },
]

DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's full default set: not like the username (stricter than Django's 0.7, which lets
# "name-name" through), 8+ characters, not a common password, not all digits.
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"max_similarity": 0.5},
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Sign-in throttling (django-axes): DURABLE_LOGIN_FAILURE_LIMIT wrong passwords for one
# username from one address lock that pair out for DURABLE_LOGIN_COOLOFF_MINUTES; a staff
# user unlocks it early by deleting its access attempt in the admin (or `axes_reset`).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("DURABLE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envfloat("DURABLE_LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Wrong API tokens from one address within a minute before its token requests get 429.
DURABLE_TOKEN_FAILURE_LIMIT = envint("DURABLE_TOKEN_FAILURE_LIMIT")

# Mail, for password resets: without EMAIL_HOST there is no way to deliver a reset link,
# so the reset pages are not served at all (config/urls.py).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = envint("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "durable@localhost")

# Shared by every web process when set (throttling counts, the overview's cache); else
# each process keeps its own.
if os.environ.get("DURABLE_CACHE_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["DURABLE_CACHE_URL"],
        }
    }
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request until collectstatic has run

# Everything goes to stderr, one line per record, in every configuration (DEBUG or not,
# web or worker): the process manager (systemd, honcho, a container runtime) keeps it.
# Errors carry their traceback: a 500 (django.request), a task that raised
# (celery.app.trace), the engine's and the agents' warnings. The root logger has the
# handler, so Celery's worker adds none of its own and nothing is printed twice.
LOG_LEVEL = os.environ.get("DURABLE_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"DURABLE_LOG_LEVEL={LOG_LEVEL!r}: use DEBUG, INFO, WARNING or ERROR")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "line"},
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "runs": {"level": LOG_LEVEL},
        "agentkit": {"level": LOG_LEVEL},
        # Server errors with their traceback; 4xx lines are the access log's business.
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        # Failed tasks with their traceback; one line per successful task (and per sweep,
        # twice a second) would drown what matters.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
    },
}

# Optional error reporting to Sentry (or a compatible service) when SENTRY_DSN is set:
# Django and Celery integrations, messages redacted as stored errors are (config.sentry).
SENTRY_DSN = os.environ.get("SENTRY_DSN", "").strip()
SENTRY_ENVIRONMENT = os.environ.get("SENTRY_ENVIRONMENT", "production")
SENTRY_TRACES_SAMPLE_RATE = envfloat("SENTRY_TRACES_SAMPLE_RATE", 0.0)
if SENTRY_TRACES_SAMPLE_RATE > 1:
    raise ImproperlyConfigured("SENTRY_TRACES_SAMPLE_RATE is a fraction between 0 and 1")
if SENTRY_DSN:
    from config import sentry

    sentry.init(SENTRY_DSN, environment=SENTRY_ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE)

# --- Celery -------------------------------------------------------------------
# The broker is only a doorbell: every message names a run whose state lives in
# the database, so a lost message delays a run and the sweep sends it again.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.split("://", 1)[0] not in ("filesystem", "redis", "rediss", "amqp", "pyamqp", "memory"):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL={CELERY_BROKER_URL!r}: use filesystem://, redis://, or amqp://"
    )
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT = "runs.broker:Transport"  # writes each message atomically
    BROKER_DIR = Path(os.environ.get("DURABLE_BROKER_DIR", VAR_DIR / "broker"))
    CELERY_BROKER_TRANSPORT_OPTIONS = transport_options(BROKER_DIR)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The queue that runs and the sweep use unless a workflow names another.
DURABLE_QUEUE = CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DURABLE_QUEUE") or conf.default("DURABLE_QUEUE")
# The queues workers consume (`celery worker -Q` lists them): starting a run on any other
# queue is refused, since no worker would ever answer its doorbell.
DURABLE_QUEUES = envlist("DURABLE_QUEUES", [DURABLE_QUEUE])
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# How long the pool waits for a result from a child that died before it reports the
# loss (default 10 s). Results are not used here, and the report is what recovers the
# child's run at once (runs.tasks.recover_after_lost_child).
CELERY_WORKER_LOST_WAIT = 0.2
# The prefork pool with a prompter supervisor (see runs/pool.py); --pool=prefork uses it too.
CELERY_WORKER_POOL = "runs.pool:TaskPool"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Durable runtime ----------------------------------------------------------
# How often each worker process proves it is alive, and how long its silence
# must last before its runs count as orphaned and are dispatched again.
DURABLE_HEARTBEAT_INTERVAL = envfloat("DURABLE_HEARTBEAT_INTERVAL")
DURABLE_LEASE_TIMEOUT = envfloat("DURABLE_LEASE_TIMEOUT")
# How often celery beat runs the sweep (lapsed leases, due wake-ups, lost messages).
DURABLE_SWEEP_INTERVAL = envfloat("DURABLE_SWEEP_INTERVAL")
# A pending run whose doorbell has not been answered after this long is rung again.
DURABLE_REDISPATCH_AFTER = envfloat("DURABLE_REDISPATCH_AFTER")
# After this many crash recoveries a run is dead-lettered for an operator.
DURABLE_MAX_RECOVERIES = envint("DURABLE_MAX_RECOVERIES")


def envlimits(name: str, parse) -> dict:
    """KEY=VALUE pairs, comma-separated, e.g. DURABLE_CONCURRENCY="research=2,refund=5"."""
    limits = {}
    for item in envlist(name, []):
        key, sep, value = item.rpartition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            limits[key.strip()] = parse(value.strip())
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not KEY=VALUE in the documented form") from None
    return limits


def parse_concurrency(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def parse_rate(value: str) -> tuple[int, float]:
    calls, _, seconds = value.partition("/")
    calls_n, seconds_f = int(calls), float(seconds or "1")
    if calls_n < 1 or seconds_f <= 0:
        raise ValueError
    return calls_n, seconds_f


# Per-workflow concurrency limits, overriding @workflow(concurrency=N): "name=N,...".
DURABLE_CONCURRENCY = envlimits("DURABLE_CONCURRENCY", parse_concurrency)
# Shared rate limits, overriding RateLimit(...) in code: "key=CALLS/SECONDS,...",
# e.g. "openai:gpt-4o=5/1,anthropic=50/60".
DURABLE_RATE_LIMITS = envlimits("DURABLE_RATE_LIMITS", parse_rate)
# Modules whose import registers workflows (comma-separated).
DURABLE_WORKFLOW_MODULES = envlist("DURABLE_WORKFLOW_MODULES", ["agentkit.demos"])
# JSON that people and clients send (run input, signal payloads, checkpoint edits) is
# refused beyond this many bytes of text, and every stored JSON value beyond this many
# levels of nested arrays and objects (runs.jsoninput). Past ~200 levels Python's own
# encoder and decoder recurse too deep to be safe, so the limit stops there.
DURABLE_JSON_MAX_BYTES = envint("DURABLE_JSON_MAX_BYTES")
DURABLE_JSON_MAX_DEPTH = envint("DURABLE_JSON_MAX_DEPTH")
# A step's arguments are kept on its checkpoint up to this many bytes of JSON; larger
# ones keep only their digest, enough for `runs check` to see that they changed.
DURABLE_STEP_INPUT_BYTES = envint("DURABLE_STEP_INPUT_BYTES")

# Beat looks every so often for runs to notify about (notifications.models), among those
# that changed in the last DURABLE_NOTIFY_LOOKBACK_HOURS; links in notifications start with
# DURABLE_BASE_URL (e.g. https://runs.example.com).
DURABLE_NOTIFY_POLL_SECONDS = envfloat("DURABLE_NOTIFY_POLL_SECONDS")
DURABLE_NOTIFY_LOOKBACK_HOURS = envfloat("DURABLE_NOTIFY_LOOKBACK_HOURS")
DURABLE_BASE_URL = os.environ.get("DURABLE_BASE_URL", "")
# Beat asks every so often which schedules (schedules.models) have a tick due.
DURABLE_SCHEDULE_POLL_SECONDS = envfloat("DURABLE_SCHEDULE_POLL_SECONDS")
# Tests that drive the engine in-process turn the heartbeat thread off.
DURABLE_HEARTBEAT_THREAD = envbool("DURABLE_HEARTBEAT_THREAD")
# The longest a step may run when it sets no timeout of its own (0: no limit). Past it the
# attempt is interrupted and fails with StepTimeout; a step stuck in C code that ignores
# the interruption has its pool process killed DURABLE_KILL_GRACE later (runs.liveness).
DURABLE_MAX_STEP_SECONDS = envfloat("DURABLE_MAX_STEP_SECONDS")
DURABLE_KILL_GRACE = envfloat("DURABLE_KILL_GRACE")
# How long one delivery executes a run before handing it back to the queue at a step
# boundary: below Redis's visibility timeout (1 h) and RabbitMQ's consumer timeout (30 min).
# A run pinned to a workflow version this worker does not register waits this long before
# it is dispatched again on its queue, for a worker that still has that version.
DURABLE_PINNED_RETRY_SECONDS = envfloat("DURABLE_PINNED_RETRY_SECONDS")
DURABLE_DELIVERY_SECONDS = envfloat("DURABLE_DELIVERY_SECONDS")
# How many runs one prefork pool process executes at once, each on a thread of its own, with
# their checkpoints committed together (runs.executor); 1 executes one run at a time in the
# pool process itself, as it always does on the embedded broker. Each thread keeps a
# database connection: mind PostgreSQL's max_connections (workers x pool processes x this).
DURABLE_RUNS_PER_PROCESS = envint("DURABLE_RUNS_PER_PROCESS")
# Maintenance (sweep, recoveries, wake-ups) never waits on a row lock longer than this.
DURABLE_MAINTENANCE_LOCK_TIMEOUT = envfloat("DURABLE_MAINTENANCE_LOCK_TIMEOUT")
DURABLE_MAINTENANCE_STATEMENT_TIMEOUT = envfloat("DURABLE_MAINTENANCE_STATEMENT_TIMEOUT")


# --- Agents (issue 4) -----------------------------------------------------------
# LLM provider for agent steps: "fake" (offline, deterministic), "openai",
# "anthropic", or "auto" (OpenAI if its key is set, else Anthropic, else fake).
AGENTS_LLM_PROVIDER = os.environ.get("AGENTS_LLM_PROVIDER", "auto").strip().lower() or "auto"
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
ANTHROPIC_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
# Default model per provider, when a workflow names none.
AGENTS_FAKE_MODEL = os.environ.get("AGENTS_FAKE_MODEL", "fake-1")
AGENTS_OPENAI_MODEL = os.environ.get("AGENTS_OPENAI_MODEL", "gpt-5-mini")
AGENTS_ANTHROPIC_MODEL = os.environ.get("AGENTS_ANTHROPIC_MODEL", "claude-haiku-4-5")
# Seconds one model request may take; the step's hard timeout is a little longer.
AGENTS_LLM_TIMEOUT = envfloat("AGENTS_LLM_TIMEOUT")
# Attempts per model call (rate limits, timeouts, malformed output); auth errors get one.
AGENTS_LLM_MAX_ATTEMPTS = envint("AGENTS_LLM_MAX_ATTEMPTS")
AGENTS_LLM_MAX_TOKENS = envint("AGENTS_LLM_MAX_TOKENS")

# Estimated cost per model: runs.conf.PRICES, and
# AGENTS_PRICES_JSON='{"my-model": {"input": 1.0, "output": 2.0}}' adds or overrides entries.


def _prices_from_env(name: str) -> dict:
    import json

    value = os.environ.get(name, "").strip()
    if not value:
        return {}
    try:
        table = json.loads(value)
        if not isinstance(table, dict):
            raise ValueError("not an object")
        return {
            str(model): {"input": float(price["input"]), "output": float(price["output"])}
            for model, price in table.items()
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise ImproperlyConfigured(
            f'{name} must be a JSON object like {{"model": {{"input": 1.0, "output": 2.0}}}}: {exc}'
        ) from None


AGENTS_PRICES = {**conf.default("AGENTS_PRICES"), **_prices_from_env("AGENTS_PRICES_JSON")}

# The offline fake model: seconds each reply takes, and the share of calls that fail
# (deterministically per call and attempt) with one of the modes listed.
AGENTS_FAKE_LATENCY = envfloat("AGENTS_FAKE_LATENCY")
AGENTS_FAKE_FAILURE_RATE = envfloat("AGENTS_FAKE_FAILURE_RATE")
AGENTS_FAKE_FAILURE_MODES = envlist("AGENTS_FAKE_FAILURE_MODES")

# Fault injection for the demo agents' simulated payment API: the share of requests
# that time out (half of them after the payment went through), and how many requests
# per idempotency key time out (after paying) before one is answered.
AGENTS_PAYMENT_FAILURE_RATE = envfloat("AGENTS_PAYMENT_FAILURE_RATE")
AGENTS_PAYMENT_TIMEOUTS_PER_KEY = envint("AGENTS_PAYMENT_TIMEOUTS_PER_KEY")
# Crash the worker (SIGKILL itself) when a demo run reaches step N, once per run;
# or pause there for AGENTS_PAUSE_SECONDS, once per run, so a test can kill it. -1: off.
AGENTS_CRASH_AT_STEP = envint("AGENTS_CRASH_AT_STEP")
AGENTS_PAUSE_AT_STEP = envint("AGENTS_PAUSE_AT_STEP")
AGENTS_PAUSE_SECONDS = envfloat("AGENTS_PAUSE_SECONDS")


# --- Operations (issue 6) ---------------------------------------------------------
# The JSON API under /api/, the OpenAPI schema, /metrics, and scheduled pruning.
# The API's authentication, throttles, renderer, parser and error handling are set on its
# views (api.views.POLICY); these are DRF's defaults for anything else.
REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# Requests per address without signing in, and per signed-in user.
DURABLE_API_ANON_RATE = os.environ.get("DURABLE_API_ANON_RATE") or conf.default("DURABLE_API_ANON_RATE")
DURABLE_API_USER_RATE = os.environ.get("DURABLE_API_USER_RATE") or conf.default("DURABLE_API_USER_RATE")
SPECTACULAR_SETTINGS = {
    "TITLE": "Durable runs API",
    "DESCRIPTION": "Start, inspect, export and operate durable runs. Authenticate with "
    "`Authorization: Token <key>` (create one with `manage.py drf_create_token USER`).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema lists this deployment's workflows: it is read like the API, signed in.
    "SERVE_PERMISSIONS": ["api.views.CanView"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api",
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.models.Status",
        "CheckpointStatusEnum": "steps.models.CheckpointStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.bound_path_ids",
    ],
}


def envduration(name: str, default: timedelta | None) -> timedelta | None:
    from runs.durations import parse_duration

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


def envnetworks(name: str) -> list[str]:
    import ipaddress

    networks = envlist(name, [])
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {network!r} is not an IP address or network") from None
    return networks


# /metrics answers a request bearing this token (`Authorization: Bearer ...`) or coming
# from one of these addresses/networks (REMOTE_ADDR, comma-separated). Neither set: 403.
DURABLE_METRICS_TOKEN = os.environ.get("DURABLE_METRICS_TOKEN", "")
DURABLE_METRICS_ALLOWED_IPS = envnetworks("DURABLE_METRICS_ALLOWED_IPS")
# Error messages and model calls are stored with every secret they contain replaced by
# [redacted] (runs.redaction): API keys, tokens, Authorization headers, the values of the
# secret settings above, and these values (comma-separated), e.g. a payment API's key.
DURABLE_REDACT_VALUES = envlist("DURABLE_REDACT_VALUES")
# A scrape within this many seconds of the last one is answered from memory.
DURABLE_METRICS_CACHE_SECONDS = envfloat("DURABLE_METRICS_CACHE_SECONDS")
# Counters add up rows newer than their stored totals on each scrape; rows this old are
# added to the totals (api/tallies.py). Keep it above the longest a transaction that
# writes steps stays open (DURABLE_DB_IDLE_IN_TRANSACTION_TIMEOUT ends idle ones).
DURABLE_METRICS_SETTLE_SECONDS = envfloat("DURABLE_METRICS_SETTLE_SECONDS")

# Scheduled pruning: with DURABLE_PRUNE_OLDER_THAN set (e.g. 30d), beat deletes finished
# runs of DURABLE_PRUNE_STATUSES older than that every DURABLE_PRUNE_INTERVAL,
# DURABLE_PRUNE_BATCH_SIZE runs per transaction. Unset: nothing is ever deleted
# automatically. Failed and dead runs wait for an operator: they go only when listed.
DURABLE_PRUNE_OLDER_THAN = envduration("DURABLE_PRUNE_OLDER_THAN", None)
DURABLE_PRUNE_INTERVAL = envduration("DURABLE_PRUNE_INTERVAL", timedelta(hours=1))
DURABLE_PRUNE_STATUSES = envlist("DURABLE_PRUNE_STATUSES")
DURABLE_PRUNE_BATCH_SIZE = envint("DURABLE_PRUNE_BATCH_SIZE")

# Billing retention: provider calls (agents.ProviderCall, what the providers bill) outlive
# their runs. With DURABLE_BILLING_RETENTION set (e.g. 400d), beat deletes calls older than
# that every DURABLE_PRUNE_INTERVAL. Unset: they are kept for ever.
DURABLE_BILLING_RETENTION = envduration("DURABLE_BILLING_RETENTION", None)

# The sweep runs in every worker's main process (runs.liveness), where a queue full of long
# runs cannot delay it; beat only schedules upkeep: notifications, schedules, and pruning
# when it is asked for (runs.conf.beat_schedule; the rules on these settings are there too).
CELERY_BEAT_SCHEDULE = conf.beat_schedule(
    notify_every=DURABLE_NOTIFY_POLL_SECONDS,
    schedules_every=DURABLE_SCHEDULE_POLL_SECONDS,
    prune_every=DURABLE_PRUNE_INTERVAL if DURABLE_PRUNE_OLDER_THAN is not None else None,
    prune_billing_every=DURABLE_PRUNE_INTERVAL if DURABLE_BILLING_RETENTION is not None else None,
)
