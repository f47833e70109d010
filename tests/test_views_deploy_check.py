"""The deploy check page: the last `runs check`."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from runs.models import ReplayCheck, Status
from tests.factories import make_run, make_user, make_viewer

pytestmark = pytest.mark.django_db

URL = reverse("deploy_check")


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


def test_it_needs_a_login_and_the_view_permission(client):
    assert client.get(URL).status_code == 302
    client.force_login(make_user("nobody"))
    assert client.get(URL).status_code == 403


def test_it_only_answers_get(viewer_client):
    assert viewer_client.post(URL).status_code == 405


def test_it_says_when_no_check_has_run(viewer_client):
    html = viewer_client.get(URL).content.decode()
    assert 'id="no-check"' in html


def test_it_shows_the_last_check_with_its_divergences(viewer_client):
    run = make_run(Status.WAITING, workflow="retired_flow")
    with pytest.raises(CommandError):
        call_command("runs", "check", stdout=StringIO())
    html = viewer_client.get(URL).content.decode()
    assert 'failed</span><span class="l">verdict' in html
    assert f'href="{reverse("run_detail", args=[run.pk])}"' in html
    assert "No workflow named &#x27;retired_flow&#x27;" in html
    assert "cli:" in html


def test_a_passing_check_follows_with_the_earlier_one_listed(viewer_client):
    make_run(Status.WAITING, workflow="retired_flow")
    with pytest.raises(CommandError):
        call_command("runs", "check", stdout=StringIO())
    call_command("runs", "check", "--workflow", "arithmetic", stdout=StringIO())
    html = viewer_client.get(URL).content.decode()
    assert 'passed</span><span class="l">verdict' in html
    assert 'id="earlier-checks"' in html


def test_stored_text_is_escaped_and_an_odd_report_never_breaks_the_page(viewer_client):
    ReplayCheck.objects.create(
        started_at=timezone.now(),
        seconds=0.1,
        checked_by="<b>ci</b>",
        runs=2,
        unsafe=1,
        workflows={
            "<script>x</script>": {"runs": 1, "unsafe": 1, "findings": [{"message": "<img src=x>"}, "junk"]},
            "odd": "not a dict",
        },
    )
    response = viewer_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x>" not in html and "&lt;img src=x&gt;" in html
    assert "<b>ci</b>" not in html
