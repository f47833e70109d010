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


# --- production defaults fail closed --------------------------------------------------------

# What docs/deploy.md documents for production (with DATABASE_URL and CELERY_BROKER_URL).
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "kq7Vn2-Xw9sLr4TzHc8yBd3FgJm6Np1QaEu5Ko0Ri_WtZxYv" + "Mh",
    "DURABLE_HTTPS": "true",
    "ALLOWED_HOSTS": "runs.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://runs.example.com",
}


def settings_of(*names: str, **env) -> tuple[int, str]:
    """Start the settings in a fresh process with `env` and print the named settings."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "ALLOWED_HOSTS", "DEBUG")}
    code = "import django; django.setup(); from django.conf import settings as s; " + "; ".join(
        f"print(repr(s.{name}))" for name in names
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_deployment_without_a_secret_key_does_not_start(tmp_path):
    code, output = settings_of("SECRET_KEY", ALLOWED_HOSTS="runs.example.com", DURABLE_VAR_DIR=str(tmp_path))
    assert code != 0
    assert "ImproperlyConfigured: SECRET_KEY must be set" in output
    assert not (tmp_path / "secret_key").exists()


def test_requiring_a_secret_key_refuses_the_generated_one_too(tmp_path):
    code, output = settings_of("SECRET_KEY", DURABLE_REQUIRE_SECRET_KEY="true", DURABLE_VAR_DIR=str(tmp_path))
    assert code != 0
    assert "SECRET_KEY must be set" in output


def test_the_embedded_default_makes_a_key_once_and_keeps_it(tmp_path):
    code, first = settings_of("SECRET_KEY", DURABLE_VAR_DIR=str(tmp_path))
    assert code == 0, first
    stored = tmp_path / "secret_key"
    assert stored.stat().st_mode & 0o777 == 0o600
    key = stored.read_text().strip()
    assert len(key) >= 50 and first.strip() == repr(key)
    assert settings_of("SECRET_KEY", DURABLE_VAR_DIR=str(tmp_path)) == (0, first)
    assert "insecure" not in key


def test_a_given_secret_key_is_used_as_it_is(tmp_path):
    code, output = settings_of("SECRET_KEY", DURABLE_VAR_DIR=str(tmp_path), **PRODUCTION)
    assert (code, output.strip()) == (0, repr(PRODUCTION["SECRET_KEY"]))
    assert not (tmp_path / "secret_key").exists()


def test_https_turns_on_secure_cookies_redirects_and_hsts():
    names = (
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_PROXY_SSL_HEADER",
    )
    code, output = settings_of(*names, **PRODUCTION)
    assert code == 0, output
    assert output.split("\n")[:6] == [
        "True",
        "True",
        "True",
        "31536000",
        "True",
        "('HTTP_X_FORWARDED_PROTO', 'https')",
    ]
    _, output = settings_of(*names[:4], **{**PRODUCTION, "DURABLE_HTTPS": "false"})
    assert output.split("\n")[:4] == ["False", "False", "False", "0"]


def test_sessions_end_with_the_browser_and_after_twelve_hours():
    _, output = settings_of("SESSION_EXPIRE_AT_BROWSER_CLOSE", "SESSION_COOKIE_AGE")
    assert output.split("\n")[:2] == ["True", "43200"]


def deployed_env(**env) -> dict[str, str]:
    # The browser tests allow async-unsafe calls in this process: not in a deployment.
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return {**base, **PRODUCTION, **env}


def test_check_deploy_is_clean_with_the_documented_production_environment():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=deployed_env(),
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNINGS" not in output


def test_check_deploy_warns_without_https():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        capture_output=True,
        text=True,
        env=deployed_env(DURABLE_HTTPS="false"),
        timeout=120,
    )
    output = result.stdout + result.stderr
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in output
