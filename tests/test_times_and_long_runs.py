"""Times with relative day labels (local in the browser, UTC on hover), and a long run's
page with its step tools."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from runs.models import Status, ViewerPreference
from runs.templatetags.dashboard import day_label, local_time
from runs.viewer_zone import ViewerTimeZoneMiddleware
from tests.factories import make_run, make_viewer

NOW = datetime(2026, 3, 10, 8, 30, tzinfo=UTC)
TOKYO = ZoneInfo("Asia/Tokyo")


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


@pytest.mark.parametrize(
    ("moment", "label"),
    [
        # 08:30 UTC is 17:30 in Tokyo: 19:00 UTC the day before is already today there.
        (datetime(2026, 3, 9, 19, 0, tzinfo=UTC), "today 04:00"),
        (datetime(2026, 3, 9, 14, 0, tzinfo=UTC), "yesterday 23:00"),
        (datetime(2026, 3, 8, 14, 0, tzinfo=UTC), "2026-03-08 23:00"),
    ],
)
def test_day_labels_are_days_of_the_viewers_zone(moment, label):
    with timezone.override(TOKYO), time_machine.travel(NOW, tick=False):
        assert day_label(moment) == label


def test_local_time_shows_the_viewers_zone_with_utc_on_hover():
    with timezone.override(TOKYO), time_machine.travel(NOW, tick=False):
        html = local_time(datetime(2026, 3, 9, 19, 0, tzinfo=UTC))
        assert html == (
            '<time datetime="2026-03-09T19:00:00+00:00" title="2026-03-09 19:00:00 UTC">today 04:00</time>'
        )
        assert ">yesterday 23:00:05</time>" in local_time(
            datetime(2026, 3, 9, 14, 0, 5, tzinfo=UTC), "seconds"
        )
        ago = local_time(datetime(2026, 3, 10, 8, 25, tzinfo=UTC), "ago")
        assert 'title="today 17:25 · 2026-03-10 08:25:00 UTC">5 m 00 s ago</time>' in ago
    assert local_time(None) == "" and local_time(None, "ago") == "–"


def test_local_time_escapes_nothing_it_did_not_make():
    html = local_time(datetime(2026, 3, 9, 19, 0, tzinfo=UTC))
    assert isinstance(html, SafeString) and "<script" not in html


def request_with(cookie: str | None, path: str = "/", session: dict | None = None):
    request = RequestFactory().get(path)
    if session is not None:
        request.session = session
    if cookie is not None:
        request.COOKIES["tz"] = cookie
    return request


def zone_seen(cookie: str | None, path: str = "/", session: dict | None = None) -> str:
    seen = {}

    def view(request):
        seen["zone"] = timezone.get_current_timezone_name()
        return HttpResponse("ok")

    ViewerTimeZoneMiddleware(view)(request_with(cookie, path, session))
    assert timezone.get_current_timezone_name() == "UTC"  # nothing left active for the next request
    return seen["zone"]


def test_the_middleware_activates_the_zone_the_browser_named():
    assert zone_seen("Asia/Tokyo") == "Asia/Tokyo"
    assert zone_seen("America/Argentina/Buenos_Aires") == "America/Argentina/Buenos_Aires"


@pytest.mark.parametrize(
    "cookie", [None, "", "Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "x" * 500]
)
def test_the_middleware_ignores_a_missing_or_unknown_zone(cookie):
    assert zone_seen(cookie) == "UTC"


def test_the_api_stays_in_utc_whatever_the_cookie():
    assert zone_seen("Asia/Tokyo", "/api/runs/") == "UTC"


def test_a_zone_the_person_chose_comes_before_the_browsers():
    assert zone_seen("Asia/Tokyo", session={"time_zone": "Europe/Paris"}) == "Europe/Paris"


@pytest.mark.django_db
def test_a_person_chooses_a_zone_and_every_page_follows_it(client):
    viewer = make_viewer()
    client.force_login(viewer)
    client.cookies["tz"] = "Asia/Tokyo"
    run = make_run(Status.SUCCEEDED, 2)
    form = client.get(reverse("preferences")).content.decode()
    assert 'value="Europe/Paris"' in form and "Your browser says Asia/Tokyo." in form

    response = client.post(reverse("preferences"), {"time_zone": "Europe/Paris"}, follow=True)
    assert "Times are shown in Europe/Paris." in response.content.decode()
    assert ViewerPreference.objects.get(user=viewer).time_zone == "Europe/Paris"
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert f"{timezone.localtime(run.created_at, ZoneInfo('Europe/Paris')):%H:%M:%S}</time>" in html

    # Signed in again elsewhere: the choice comes back with the session.
    client.logout()  # clears the test client's cookies
    client.force_login(viewer)
    client.cookies["tz"] = "Asia/Tokyo"
    assert client.session["time_zone"] == "Europe/Paris"

    client.post(reverse("preferences"), {"time_zone": ""})  # back to the browser's zone
    assert "time_zone" not in client.session
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert f"{timezone.localtime(run.created_at, TOKYO):%H:%M:%S}</time>" in html


@pytest.mark.django_db
def test_an_unknown_zone_is_refused_and_nothing_is_saved(client):
    viewer = make_viewer()
    client.force_login(viewer)
    response = client.post(reverse("preferences"), {"time_zone": "Mars/Olympus_Mons"})
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not ViewerPreference.objects.filter(user=viewer).exists()
    assert client.get(reverse("preferences")).status_code == 200
    client.logout()
    assert client.get(reverse("preferences")).status_code == 302  # to the sign-in form


@pytest.mark.django_db
def test_pages_render_times_in_the_zone_of_the_cookie(client):
    client.force_login(make_viewer())
    run = make_run(Status.SUCCEEDED, 2)
    client.cookies["tz"] = "Asia/Tokyo"
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    tokyo = timezone.localtime(run.created_at, TOKYO)
    assert f"{tokyo:%H:%M:%S}</time>" in html
    assert f'title="{run.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"' in html


@pytest.mark.django_db
def test_a_long_runs_page_offers_collapse_expand_and_jump_and_shows_the_final_output(client):
    client.force_login(make_viewer())
    run = make_run(Status.SUCCEEDED, 15)
    run.output = {"answer": "x" * 3000}
    run.save(update_fields=["output"])
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert 'data-fold-steps="open"' in html and 'data-fold-steps="close"' in html
    assert '<a href="#step-14" class="st-succeeded" title="step_14 · succeeded">14</a>' in html
    assert '<details class="json" open data-keep-open>' in html  # the final answer is never folded away


@pytest.mark.django_db
def test_the_overview_says_since_when_with_a_day(client):
    client.force_login(make_viewer())
    html = client.get(reverse("run_overview")).content.decode()
    assert "<time datetime=" in html and ("today" in html or "yesterday" in html)


# Multi-line when pretty-printed, short enough that only folding hides it.
MEDIUM = {"rows": list(range(30)), "note": "a medium output"}


def step_item(html: str, position: int) -> str:
    start = html.index(f'<li id="step-{position}"')
    return html[start : html.index("</li>", start)]


@pytest.mark.django_db
def test_a_long_run_folds_outputs_after_the_first_few_but_not_the_last(client):
    client.force_login(make_viewer())
    run = make_run(Status.SUCCEEDED, 15, output=MEDIUM)
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    for position in range(3):
        assert "<details" not in step_item(html, position) and '<pre class="json">' in step_item(
            html, position
        )
    for position in range(3, 14):
        # Folded behind its output on one line (in the order the database keeps the keys).
        assert '<details class="json"> <summary><span class="mono">{&quot;' in step_item(html, position)
    last = step_item(html, 14)
    assert "<details" not in last and '<pre class="json">' in last


@pytest.mark.django_db
def test_a_failure_is_never_folded(client):
    client.force_login(make_viewer())
    run = make_run(Status.FAILED, 15, failed_at=14, output=MEDIUM)
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert '<details class="traceback" open data-keep-open><summary>traceback</summary>' in html
    assert '<p class="error-line"><strong class="etype">ValueError</strong>' in step_item(html, 14)
    assert '<details class="json"> ' in step_item(html, 13)


@pytest.mark.django_db
def test_a_short_run_folds_nothing(client):
    client.force_login(make_viewer())
    run = make_run(Status.SUCCEEDED, 3, output=MEDIUM)
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "data-fold-steps" not in html and '<details class="json">' not in html
