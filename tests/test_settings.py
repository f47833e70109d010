"""Settings come from the environment; a malformed value stops the start with a clear message."""

import os
import subprocess
import sys

import pytest


def manage_check(**env):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "only sqlite:// and postgres://"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL='nonsense'"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DURABLE_LEASE_TIMEOUT": "soon"}, "DURABLE_LEASE_TIMEOUT='soon' is not a number"),
        ({"DURABLE_MAX_RECOVERIES": "0"}, "DURABLE_MAX_RECOVERIES='0' must be at least 1"),
        ({"DURABLE_LEASE_TIMEOUT": "0.2", "DURABLE_HEARTBEAT_INTERVAL": "0.5"}, "must be longer than"),
        ({"CELERY_BROKER_URL": "kafka://x"}, "CELERY_BROKER_URL='kafka://x'"),
    ],
)
def test_it_refuses_to_start_with_a_malformed_setting(env, message):
    code, output = manage_check(**env)
    assert code != 0
    assert "ImproperlyConfigured" in output
    assert message in output


def test_it_starts_on_the_embedded_default_with_nothing_set():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, "
            "s.DATABASES['default']['OPTIONS']['transaction_mode'])",
        ],
        capture_output=True,
        text=True,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        timeout=60,
    )
    assert result.stdout.split() == ["django.db.backends.sqlite3", "filesystem://", "IMMEDIATE"]
