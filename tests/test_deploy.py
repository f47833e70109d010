"""Deployment: queues route runs to the workers that listen on them; the examples stay true."""

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from django.db import connection

from runs.models import Run, Status
from runs.workflow import workflow
from tests.processes import Cluster, wait_for
from tests.workflows import create_ledger, ledger_step

ROOT = Path(__file__).resolve().parent.parent

# Chosen by the test process and handed to the workers, so both register the same queue.
ROUTED_QUEUE = os.environ.get("DURABLE_TEST_ROUTED_QUEUE") or f"routed-{uuid.uuid4().hex[:8]}"


@workflow("deploy_routed_ledger", queue=ROUTED_QUEUE)
def routed_ledger(ctx, data):
    """Like tests.workflows.ledger, but its runs go to their own queue."""
    return {"done": [ctx.step(ledger_step, index, 0.0) for index in range(data["steps"])]}


def start_worker(cluster: Cluster, name: str, queues: list[str]) -> subprocess.Popen:
    """A worker with its own node name consuming only `queues` (Cluster.worker takes the cluster's)."""
    return cluster._spawn(
        name,
        [
            "worker",
            "-Q",
            ",".join(queues),
            "-n",
            f"{name}-{cluster.queue}@%h",
            "--pool=solo",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "info",
        ],
    )


def executing_pids(run: Run) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM test_ledger WHERE run_id = %s", [run.pk])
        return {pid for (pid,) in cursor.fetchall()}


@pytest.mark.acceptance
@pytest.mark.django_db(transaction=True)
def test_it_routes_runs_by_queue_to_the_worker_listening_on_it(tmp_path, settings):
    create_ledger()
    settings.DURABLE_QUEUES = [*settings.DURABLE_QUEUES, ROUTED_QUEUE]
    cluster = Cluster(
        tmp_path,
        DURABLE_WORKFLOW_MODULES="tests.workflows,tests.test_deploy",
        DURABLE_TEST_ROUTED_QUEUE=ROUTED_QUEUE,
    )
    try:
        general = start_worker(cluster, "general", [cluster.queue])
        routed = start_worker(cluster, "routed", [ROUTED_QUEUE])
        plain = [Run.objects.start("ledger", {"steps": 3}, queue=cluster.queue) for _ in range(3)]
        steered = [Run.objects.start("deploy_routed_ledger", {"steps": 3}) for _ in range(3)]
        assert {run.queue for run in steered} == {ROUTED_QUEUE}  # from @workflow(queue=...)

        ids = [run.pk for run in plain + steered]
        wait_for(
            lambda: Run.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == len(ids),
            90,
            "every run to succeed",
            cluster,
        )
        for run in plain:
            assert executing_pids(run) == {general.pid}, cluster.logs()
        for run in steered:
            assert executing_pids(run) == {routed.pid}, cluster.logs()
            assert Run.objects.get(pk=run.pk).output == {"done": [0, 1, 2]}
    finally:
        cluster.stop()


# --- the examples in docs/ and deploy/ ---------------------------------------------------------


def test_the_procfile_runs_web_worker_and_beat():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)
    assert set(lines) >= {"web", "worker", "beat"}
    assert "gunicorn config.wsgi" in lines["web"]
    assert "celery -A config worker" in lines["worker"] and "-Q" in lines["worker"]
    assert "celery -A config beat" in lines["beat"]


@pytest.mark.parametrize("unit", ["durable-web.service", "durable-worker@.service", "durable-beat.service"])
def test_the_systemd_examples_are_complete_units(unit):
    text = (ROOT / "deploy" / "systemd" / unit).read_text()
    for section in ("[Unit]", "[Service]", "[Install]"):
        assert section in text, f"{unit} lacks {section}"
    assert re.search(r"^ExecStart=\S+", text, re.MULTILINE)
    assert "EnvironmentFile=" in text


# The settings an operator must know about to run this durably; each is read in config/settings.py.
DOCUMENTED_SETTINGS = [
    "DATABASE_URL",
    "DATABASE_CONN_MAX_AGE",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "DURABLE_REQUIRE_SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DURABLE_QUEUE",
    "DURABLE_WORKFLOW_MODULES",
    "DURABLE_HEARTBEAT_INTERVAL",
    "DURABLE_LEASE_TIMEOUT",
    "DURABLE_SWEEP_INTERVAL",
    "DURABLE_REDISPATCH_AFTER",
    "DURABLE_MAX_RECOVERIES",
    "DURABLE_METRICS_TOKEN",
    "DURABLE_METRICS_ALLOWED_IPS",
    "DURABLE_METRICS_CACHE_SECONDS",
    "DURABLE_METRICS_SETTLE_SECONDS",
    "DURABLE_PRUNE_OLDER_THAN",
    "DURABLE_PRUNE_INTERVAL",
    "DURABLE_PRUNE_STATUSES",
    "DURABLE_PRUNE_BATCH_SIZE",
    "DURABLE_BILLING_RETENTION",
    "DURABLE_VAR_DIR",
    "DURABLE_HTTPS",
    "DURABLE_HSTS_SECONDS",
    "DURABLE_HSTS_INCLUDE_SUBDOMAINS",
    "DURABLE_HSTS_PRELOAD",
    "DURABLE_SESSION_SECONDS",
    "DURABLE_REMEMBER_SECONDS",
    "DURABLE_JSON_MAX_BYTES",
    "DURABLE_JSON_MAX_DEPTH",
    "DURABLE_REDACT_VALUES",
    "DURABLE_LOG_LEVEL",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "SENTRY_TRACES_SAMPLE_RATE",
]


@pytest.mark.parametrize("name", DOCUMENTED_SETTINGS)
def test_the_deployment_guide_explains_a_setting_that_exists(name):
    assert f'"{name}"' in (ROOT / "config" / "settings.py").read_text(), f"{name} is no longer a setting"
    assert name in (ROOT / "docs" / "deploy.md").read_text(), f"docs/deploy.md does not mention {name}"
