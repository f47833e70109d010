"""The apps as a package: a wheel built from this repository, installed into a fresh
virtualenv, runs the example host project (examples/host_project) end to end: migrate, a
real worker of the example's own Celery app, its workflow to success, and the dashboard
under the example's /ops/runs/ prefix.

The fresh virtualenv takes the dependencies (Django, Celery, ...) from this one through a
.pth file, so nothing is downloaded but the build backend; the apps themselves come only
from the wheel, and the test checks that they are imported from there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGED = ["runs", "steps", "agentkit", "api", "schedules", "notifications"]
EXAMPLE = REPO / "examples" / "host_project"

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(
        importlib.util.find_spec("pip") is None or importlib.util.find_spec("ensurepip") is None,
        reason="building and installing a wheel needs pip and venv's ensurepip",
    ),
]


def run(command: list[str], cwd: Path, env: dict, timeout: float = 300) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(tmp_path: Path) -> Path:
    # From a copy holding only what the wheel is made of: the build writes build/ and
    # *.egg-info beside its sources, and must not find the standalone project's modules.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for app in PACKAGED:
        shutil.copytree(REPO / app, source / app, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        tmp_path,
        os.environ,
    )
    (wheel,) = dist.glob("durable_runs-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, {}
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        tmp_path,
        os.environ,
    )
    return python


def example_env(tmp_path: Path) -> dict:
    # Nothing of this project's own configuration: the example's settings, its own SQLite
    # file and broker folder (CI's DATABASE_URL and CELERY_BROKER_URL are the standalone's).
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "EXAMPLE_VAR_DIR": str(tmp_path / "var")}


DASHBOARD = """
import json
from django.contrib.auth import get_user_model
from django.test import Client
user = get_user_model().objects.create_superuser("ops", "ops@example.com", "not-used")
client = Client()
client.force_login(user)
listing, page = client.get("/ops/runs/"), client.get("/ops/runs/runs/%d/")
api = client.get("/ops/runs/api/runs/%d/")
print(json.dumps({
    "list": listing.status_code, "page": page.status_code, "html": listing.content.decode(),
    "api": api.status_code, "api_status": api.json().get("status"),
}))
"""


def test_the_wheel_runs_the_example_project_from_a_fresh_virtualenv(tmp_path):
    python = fresh_venv(tmp_path, build_wheel(tmp_path))
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__", "var"))
    env = example_env(tmp_path)
    manage = [str(python), "manage.py"]

    where = run(
        [str(python), "-c", "import runs, steps, agentkit; print(runs.__file__, agentkit.__file__)"],
        example,
        env,
    )
    assert all(path.startswith(str(tmp_path / "venv")) for path in where.split()), where

    run([*manage, "migrate", "--noinput", "-v", "0"], example, env)
    assert "no issues" in run([*manage, "check"], example, env)

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            str(python),
            "-m",
            "celery",
            "-A",
            "hostsite",
            "worker",
            "-Q",
            "durable,celery",
            "-c",
            "1",
            "-l",
            "info",
        ],
        cwd=example,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started = run(
            [
                *manage,
                "runs",
                "start",
                "checkout",
                "--input",
                '{"customer": "c-1", "items": [{"cents": 250, "quantity": 2}]}',
            ],
            example,
            env,
        )
        run_id = int(started.split()[2])  # "started run N of checkout"
        deadline = time.monotonic() + 90
        shown = ""
        while time.monotonic() < deadline and worker.poll() is None:
            shown = run([*manage, "runs", "show", str(run_id)], example, env)
            if shown.split("\n")[0].split()[-1] in ("succeeded", "failed", "dead"):
                break
            time.sleep(0.2)
        assert shown.split("\n")[0].split()[-1] == "succeeded", (
            f"{shown}\n{(tmp_path / 'worker.log').read_text()}"
        )
        assert '"cents": 500' in shown
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()

    answer = json.loads(
        run([*manage, "shell", "-c", DASHBOARD % (run_id, run_id)], example, env).strip().splitlines()[-1]
    )
    assert (answer["list"], answer["page"]) == (200, 200)
    assert f'href="/ops/runs/runs/{run_id}/"' in answer["html"]  # the run, linked under the prefix
    assert "/static/runs/htmx.min.js" in answer["html"]  # static files from the wheel
    assert "Back to the shop" in answer["html"]  # the example's own runs/base.html
    assert (answer["api"], answer["api_status"]) == (200, "succeeded")  # the JSON API, same prefix
