"""Fault injection for demo and test runs: crash or pause the worker at step N.

`AGENTS_CRASH_AT_STEP=N` makes the worker process SIGKILL itself when a run of a
faultable workflow (the demo agents, see FAULTABLE) starts its step at position N;
`AGENTS_PAUSE_AT_STEP=N` makes it sleep there for AGENTS_PAUSE_SECONDS, so a test
can kill the worker from outside at a known point. Either happens once per run and
position (a FaultMark row says so), so the run's recovery goes through.
Every agent step (model calls, tools) calls `inject()` before doing anything.
"""

from __future__ import annotations

import os
import signal
import time

from django.conf import settings

from runs.workflow import current_step

# Workflows whose runs may be crashed or paused; agentkit.demos adds its own.
FAULTABLE: set[str] = set()


def die() -> None:
    """The power cut. Tests running the engine in-process replace this."""
    os.kill(os.getpid(), signal.SIGKILL)


def inject() -> None:
    crash_at, pause_at = settings.AGENTS_CRASH_AT_STEP, settings.AGENTS_PAUSE_AT_STEP
    if crash_at < 0 and pause_at < 0:
        return
    info = current_step()
    if info.position not in (crash_at, pause_at) or not _faultable(info.run_id):
        return
    from agentkit.models import FaultMark

    if info.position == pause_at and FaultMark.first_time(info.run_id, info.position, "pause", os.getpid()):
        time.sleep(settings.AGENTS_PAUSE_SECONDS)
    if info.position == crash_at and FaultMark.first_time(info.run_id, info.position, "crash", os.getpid()):
        die()


def _faultable(run_id: int) -> bool:
    from runs.models import Run

    return Run.objects.filter(pk=run_id, workflow__in=FAULTABLE).exists()
