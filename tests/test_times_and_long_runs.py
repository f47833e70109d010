"""Times with relative day labels (local in the browser, UTC on hover), and a long run's
page with its step tools."""

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from runs.models import Status
from runs.templatetags.dashboard import day_label, local_time
from tests.factories import make_run, make_viewer

NOW = datetime(2026, 3, 10, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "label"),
    [
        (datetime(2026, 3, 10, 0, 5, tzinfo=UTC), "today 00:05"),
        (datetime(2026, 3, 9, 19, 0, tzinfo=UTC), "yesterday 19:00"),
        (datetime(2026, 3, 7, 19, 0, tzinfo=UTC), "2026-03-07 19:00"),
    ],
)
def test_day_labels_say_which_day(moment, label):
    assert day_label(moment, now=NOW) == label


def test_local_time_carries_utc_for_the_browser_and_the_hover():
    html = local_time(datetime(2026, 3, 9, 19, 0, tzinfo=UTC))
    assert 'datetime="2026-03-09T19:00:00+00:00"' in html
    assert 'title="2026-03-09 19:00:00 UTC"' in html and "data-local" in html
    assert local_time(None) == ""


@pytest.mark.django_db
def test_a_long_runs_page_offers_collapse_expand_and_jump_and_shows_the_final_output(client):
    client.force_login(make_viewer())
    run = make_run(Status.SUCCEEDED, 15)
    run.output = {"answer": "x" * 3000}
    run.save(update_fields=["output"])
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert 'data-fold-steps="open"' in html and 'data-fold-steps="close"' in html
    assert '<a href="#step-14">14</a>' in html
    assert '<details class="json" open>' in html  # the final answer is never folded away


@pytest.mark.django_db
def test_the_overview_says_since_when_with_a_day(client):
    client.force_login(make_viewer())
    html = client.get(reverse("run_overview")).content.decode()
    assert "<time datetime=" in html and ("today" in html or "yesterday" in html)
