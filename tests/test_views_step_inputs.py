"""The run page shows what each step was called with (Checkpoint.input)."""

import pytest
from django.urls import reverse

from runs import stepinputs
from runs.models import Status
from steps.models import Checkpoint
from tests.factories import make_run, make_viewer

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


def page(client, run) -> str:
    response = client.get(reverse("run_detail", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_it_shows_each_step_call_with_its_arguments(viewer_client):
    run = make_run(Status.SUCCEEDED, steps=2)
    Checkpoint.objects.filter(run=run, position=0).update(input=stepinputs.record([1, "two"], {"limit": 5}))
    html = page(viewer_client, run)
    assert "called with (1, &quot;two&quot;, limit=5)" in html
    assert html.count("called with") == 1  # the step without a recorded input shows none


def test_arguments_are_escaped_and_capped(viewer_client):
    run = make_run(Status.SUCCEEDED, steps=1)
    Checkpoint.objects.filter(run=run).update(
        input=stepinputs.record(["<script>alert(1)</script>" + "x" * 900], {})
    )
    html = page(viewer_client, run)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html
    assert "x" * 400 not in html


def test_an_input_not_kept_says_why_and_an_odd_one_never_breaks_the_page(viewer_client, settings):
    settings.DURABLE_STEP_INPUT_BYTES = 10
    run = make_run(Status.SUCCEEDED, steps=2)
    Checkpoint.objects.filter(run=run, position=0).update(input=stepinputs.record(["a long argument"], {}))
    Checkpoint.objects.filter(run=run, position=1).update(input={"args": "not a list", "kwargs": [1]})
    html = page(viewer_client, run)
    assert "called with (not kept: larger than 10 bytes)" in html
    assert "called with (unreadable)" in html
