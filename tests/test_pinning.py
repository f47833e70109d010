"""Workflow `version=` pinning: a run executes only where its recorded version is registered."""

import dataclasses
from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from runs import replaycheck
from runs.models import Run, Status, WaitKind
from runs.recovery import sweep
from runs.workflow import pinned_elsewhere, registry
from tests.factories import make_viewer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def deploy_version(monkeypatch):
    def deploy(version: str) -> None:
        definition = dataclasses.replace(registry.get("pinned_flow"), declared_version=version)
        monkeypatch.setitem(registry._workflows, "pinned_flow", definition)

    return deploy


def test_only_two_different_declared_versions_pin():
    assert pinned_elsewhere("1", "2")
    assert not pinned_elsewhere("2", "2")
    assert not pinned_elsewhere("src-0123abcd", "2")  # recorded before a version was declared
    assert not pinned_elsewhere("1", "src-0123abcd")  # the declaration was dropped
    assert not pinned_elsewhere("", "2")


def test_runs_record_the_declared_version(deploy_version, doorbells):
    deploy_version("7")
    run = Run.objects.start("pinned_flow", {})
    assert run.code_version == "7"


def test_a_worker_with_another_version_leaves_the_run_waiting_unreplayed(deploy_version, doorbells, settings):
    settings.DURABLE_PINNED_RETRY_SECONDS = 60
    run = Run.objects.start("pinned_flow", {})
    assert doorbells.drain() == ["ok/sleep"]
    deploy_version("2")
    later = timezone.now() + timedelta(hours=2)
    with time_machine.travel(later, tick=False):
        sweep()
        assert doorbells.drain() == ["ok/version"]
    run.refresh_from_db()
    assert (run.status, run.wait_kind, run.steps_done) == (Status.WAITING, WaitKind.VERSION, 2)
    assert run.wake_at == later + timedelta(seconds=60)
    # Back on a worker with its version, it finishes where it was.
    deploy_version("1")
    with time_machine.travel(later + timedelta(seconds=61), tick=False):
        sweep()
        assert doorbells.drain() == ["succeeded"]
    assert Run.objects.get(pk=run.pk).output == {"first": 2, "finished_by_version": "1"}


def test_the_run_page_says_where_a_pinned_run_resumes(deploy_version, doorbells, client):
    run = Run.objects.start("pinned_flow", {})
    doorbells.drain()
    deploy_version("2")
    client.force_login(make_viewer())
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "pinned: resumes only on a worker with version" in html
    assert f'queue <span class="mono">{run.queue}</span>' in html
    deploy_version("1")
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "pinned:" not in html


def test_runs_check_reports_pinned_runs_without_replaying_them(deploy_version, doorbells):
    Run.objects.start("pinned_flow", {})
    doorbells.drain()
    deploy_version("2")
    report = replaycheck.check_runs()
    check = report.workflows["pinned_flow"]
    assert dict(check.outcomes) == {"pinned": 1}
    assert report.ok
