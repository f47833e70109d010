"""Admin pages: a run's checkpoints on its page, monospace tracebacks, plurals."""

import re

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from runs import admin as runs_admin
from tests.factories import make_failed_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_a_runs_admin_page_lists_its_checkpoints_linked(admin_client):
    run = make_failed_run(3)
    html = admin_client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert "Checkpoints (read-only)" in html
    for checkpoint in run.checkpoints.all():
        link = reverse("admin:steps_checkpoint_change", args=[checkpoint.pk])
        assert f'<a href="{link}">#{checkpoint.position}</a>' in html
    assert "<td>step_2</td><td>failed</td><td>live</td>" in html


def test_a_long_run_links_to_the_rest_of_its_checkpoints(admin_client, monkeypatch):
    monkeypatch.setattr(runs_admin, "CHECKPOINTS_SHOWN", 2)
    run = make_failed_run(4)
    html = admin_client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert len(re.findall(r'href="/admin/steps/checkpoint/\d+/change/"', html)) == 2
    assert f"all checkpoints of run #{run.pk}" in html


def test_admin_pages_load_the_project_styles_and_say_worker_processes(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "/static/runs/admin-durable.css" in html
    assert "Worker processes" in html and "processs" not in html
