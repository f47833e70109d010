"""The run list: filters, status counts, keyset pages, live rows, overview numbers."""

import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runs.models import AuditEntry, Run, Status, WaitKind
from runs.views import overview as overview_views
from runs.views import run_list as list_views
from tests.factories import make_failed_run, make_operator, make_run, make_viewer, make_waiting_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _fresh_overview():
    cache.delete(overview_views.OVERVIEW_CACHE_KEY)  # the overview is cached between requests


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


@pytest.fixture
def operator_client(client):
    client.force_login(make_operator())
    return client


def row_ids(response) -> list[int]:
    return [run.pk for run in response.context["page"].runs]


def test_it_redirects_anonymous_users_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")


def test_it_refuses_users_without_view_permission(client):
    from tests.factories import make_user

    client.force_login(make_user("nobody"))
    assert client.get("/").status_code == 403


def test_it_lists_a_failed_run_with_its_cause(viewer_client):
    run = make_failed_run(steps=3)
    response = viewer_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="run-{run.pk}"' in html
    assert "ValueError" in html
    assert "bad value from the tool" in html
    assert "failed at #2" in html
    assert "step_2" in html


def test_it_shows_progress_against_the_workflows_recent_successes(viewer_client):
    make_run(Status.SUCCEEDED, 4, workflow="counter")
    running = make_run(Status.RUNNING, 1, workflow="counter", lease_owner="w1")
    response = viewer_client.get("/")
    shown = {run.pk: run for run in response.context["page"].runs}
    assert shown[running.pk].progress() == 25
    assert 'aria-valuenow="25"' in response.content.decode()


def test_it_shows_an_unknown_length_without_a_percentage(viewer_client):
    running = make_run(Status.RUNNING, 2, workflow="never_finished")
    response = viewer_client.get("/")
    assert {run.pk: run for run in response.context["page"].runs}[running.pk].progress() is None
    assert "bar st-running unknown" in response.content.decode()


def test_it_counts_runs_by_status(viewer_client):
    make_failed_run()
    make_failed_run()
    make_run(Status.SUCCEEDED)
    make_run(Status.RUNNING, lease_owner="w1")
    response = viewer_client.get("/")
    counts = {count["status"]: count["count"] for count in response.context["counts"]}
    assert counts[""] == 4
    assert counts[Status.FAILED] == 2
    assert counts[Status.SUCCEEDED] == 1
    assert counts[Status.RUNNING] == 1
    assert counts[Status.DEAD] == 0


def test_status_counts_stop_at_a_cap(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "COUNT_CAP", 2)
    for _ in range(3):
        make_failed_run()
    make_run(Status.SUCCEEDED)
    response = viewer_client.get("/")
    counts = {count["status"]: count for count in response.context["counts"]}
    assert (counts[Status.FAILED]["count"], counts[Status.FAILED]["capped"]) == (2, True)
    assert (counts[Status.SUCCEEDED]["count"], counts[Status.SUCCEEDED]["capped"]) == (1, False)
    assert (counts[""]["count"], counts[""]["capped"]) == (3, True)
    html = response.content.decode()
    assert '<span class="n" title="at least 2: counting stops there">2+</span> failed' in html
    assert '<span class="n">1</span> succeeded' in html


def test_capped_counts_take_one_query_and_keep_the_filters():
    make_failed_run(workflow="a")
    make_failed_run(workflow="b")
    make_run(Status.SUCCEEDED, workflow="a")
    with CaptureQueriesContext(connection) as queries:
        found = list_views.capped_counts(
            Run.objects.filter(workflow="a"), ["failed", "succeeded", "dead"], 10
        )
    assert found == {"failed": 1, "succeeded": 1, "dead": 0}
    assert len(queries) == 1


def test_it_filters_by_status_when_a_count_is_clicked(viewer_client):
    failed = make_failed_run()
    make_run(Status.SUCCEEDED)
    response = viewer_client.get("/?status=failed")
    assert row_ids(response) == [failed.pk]
    selected = [count for count in response.context["counts"] if count["selected"]]
    assert [count["status"] for count in selected] == [Status.FAILED]


def test_status_counts_keep_the_other_filters(viewer_client):
    make_failed_run(workflow="payment")
    make_failed_run(workflow="arithmetic")
    response = viewer_client.get("/?workflow=payment")
    counts = {count["status"]: count for count in response.context["counts"]}
    assert counts[Status.FAILED]["count"] == 1
    assert counts[Status.FAILED]["query"] == "workflow=payment&status=failed"


def test_it_filters_by_workflow(viewer_client):
    payment = make_run(workflow="payment")
    make_run(workflow="arithmetic")
    assert row_ids(viewer_client.get("/?workflow=payment")) == [payment.pk]


def test_it_finds_a_run_by_id(viewer_client):
    wanted = make_run(input={"x": "alpha"})
    make_run(input={"x": "beta"})
    assert row_ids(viewer_client.get(f"/?q={wanted.pk}")) == [wanted.pk]
    assert row_ids(viewer_client.get(f"/?q=%23{wanted.pk}")) == [wanted.pk]


def test_it_finds_runs_by_input_text(viewer_client):
    wanted = make_run(input={"customer": "ACME Widgets"})
    make_run(input={"customer": "Globex"})
    assert row_ids(viewer_client.get("/?q=acme")) == [wanted.pk]


def test_a_huge_number_in_the_search_does_not_break_the_query(viewer_client):
    make_run()
    response = viewer_client.get("/?q=" + "9" * 40)
    assert response.status_code == 200
    assert row_ids(response) == []


def test_it_filters_by_start_time(viewer_client):
    old = make_run(created_ago=timedelta(days=3))
    recent = make_run(created_ago=timedelta(hours=1))
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    until = (timezone.now() - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert row_ids(viewer_client.get(f"/?started_after={since}")) == [recent.pk]
    assert row_ids(viewer_client.get(f"/?started_before={until}")) == [old.pk]


def test_it_reports_and_ignores_an_invalid_filter(viewer_client):
    run = make_run()
    response = viewer_client.get("/?started_after=yesterday-ish")
    assert response.status_code == 200
    assert row_ids(response) == [run.pk]
    assert "(ignored)" in response.content.decode()


def test_it_pages_by_id_without_offset(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "PAGE_SIZE", 3)
    runs = [make_run(steps=0) for _ in range(8)]
    ids = sorted((run.pk for run in runs), reverse=True)

    with CaptureQueriesContext(connection) as queries:
        first = viewer_client.get("/")
    assert row_ids(first) == ids[:3]
    assert first.context["page"].newer is None
    assert first.context["page"].older == ids[2]
    assert not any("OFFSET" in query["sql"].upper() for query in queries.captured_queries)

    second = viewer_client.get(f"/?before={ids[2]}")
    assert row_ids(second) == ids[3:6]
    assert second.context["page"].newer == ids[3]

    last = viewer_client.get(f"/?before={ids[5]}")
    assert row_ids(last) == ids[6:]
    assert last.context["page"].older is None

    back = viewer_client.get(f"/?after={ids[6]}")
    assert row_ids(back) == ids[3:6]


def test_paging_back_to_the_top_shows_the_newest_page(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "PAGE_SIZE", 3)
    ids = sorted((make_run(steps=0).pk for _ in range(5)), reverse=True)
    response = viewer_client.get(f"/?after={ids[3]}")
    assert row_ids(response) == ids[:3]
    assert response.context["page"].newer is None


def test_pager_links_keep_the_filters(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "PAGE_SIZE", 2)
    for _ in range(3):
        make_failed_run()
    response = viewer_client.get("/?status=failed")
    assert response.context["older_query"].startswith("status=failed&before=")


def test_it_serves_the_results_fragment_to_htmx(viewer_client):
    make_run()
    response = viewer_client.get("/?status=succeeded", HTTP_HX_TARGET="results", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="results"')
    assert "<html" not in html


def test_it_serves_the_whole_page_for_history_restores(viewer_client):
    response = viewer_client.get(
        "/", HTTP_HX_TARGET="results", HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX
    )
    assert "<html" in response.content.decode()


def test_links_work_with_and_without_javascript(viewer_client):
    run = make_run()
    html = viewer_client.get("/").content.decode()
    url = reverse("run_detail", args=[run.pk])
    assert f'href="{url}" hx-get="{url}"' in html
    assert 'hx-push-url="true"' in html


def test_it_polls_its_rows_with_its_filters_and_the_moment_it_was_drawn(viewer_client):
    make_run(Status.SUCCEEDED)
    html = viewer_client.get("/?status=failed&workflow=arithmetic").content.decode()
    stamp = Run.objects.last_change()
    query = f"status=failed&amp;workflow=arithmetic&amp;v={stamp}"
    assert f'hx-get="/runs/rows/?{query}" hx-trigger="every 5s, visibilitychange from:document"' in html


def test_it_hides_bulk_controls_from_viewers(viewer_client):
    make_failed_run()
    html = viewer_client.get("/").content.decode()
    assert 'name="run"' not in html
    assert "Resume…" not in html


def test_it_shows_bulk_controls_to_operators(operator_client):
    run = make_failed_run()
    html = operator_client.get("/").content.decode()
    assert f'name="run" value="{run.pk}"' in html
    assert "Resume…" in html


def test_it_escapes_untrusted_text(viewer_client):
    make_failed_run(
        input={"prompt": "<script>alert(1)</script>"}, error_message="<img src=x onerror=alert(1)>"
    )
    Run.objects.update(error_message="<img src=x onerror=alert(1)>", current_step="<b>step</b>")
    html = viewer_client.get("/").content.decode()
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>step</b>" not in html


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/?status=failed",
        "/?workflow=arithmetic",
        "/?q=alpha",
        "/?q={first}",
        "/?started_after=2000-01-01T00:00",
    ],
)
def test_it_issues_the_same_number_of_queries_for_any_number_of_rows(viewer_client, url):
    statuses = ["succeeded", "failed", "running"]

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get(url).status_code == 200
        return len(queries)

    first = None
    for status in statuses:
        lease = "w1" if status == "running" else ""
        run = make_run(status, 2, attempts_per_step=1, lease_owner=lease, input={"x": "alpha"})
        first = first or run
    url = url.format(first=first.pk)  # a run id search finds that run
    few = count_queries()
    for index in range(60):
        make_run(statuses[index % 3], 3, attempts_per_step=1, lease_owner="w1", input={"x": "alpha"})
    assert count_queries() == few


def test_its_query_count_stays_small(viewer_client, django_assert_max_num_queries):
    for index in range(30):
        make_run([Status.SUCCEEDED, Status.FAILED, Status.RUNNING][index % 3], 2)
    # session, user, permissions (2), last change (live refresh), counts, page, typical
    # steps, model usage, runs awaiting a decision (the navigation's inbox count)
    with django_assert_max_num_queries(10):
        viewer_client.get("/")


# --- live rows -----------------------------------------------------------------------


def live_query(client, query: str = "") -> str:
    """The query string the list page drawn at `query` polls with."""
    html = client.get("/" + (f"?{query}" if query else "")).content.decode()
    return re.search(r'hx-get="/runs/rows/\?([^"]*)"', html).group(1).replace("&amp;", "&")


def test_live_rows_answer_204_after_one_query_while_no_run_changed(viewer_client):
    for _ in range(3):
        make_run(Status.RUNNING, lease_owner="w1")
    query = live_query(viewer_client)
    with CaptureQueriesContext(connection) as queries:
        response = viewer_client.get(f"/runs/rows/?{query}", **HTMX)
    assert response.status_code == 204
    on_runs = [q["sql"] for q in queries.captured_queries if "runs_run" in q["sql"]]
    assert len(on_runs) == 1 and "MAX" in on_runs[0].upper()


def test_live_rows_send_counts_rows_and_pager_once_a_run_changed(viewer_client):
    failed = make_failed_run()
    query = live_query(viewer_client)
    Run.objects.filter(pk=failed.pk).update(status=Status.SUCCEEDED, updated_at=timezone.now())
    new = make_run(Status.RUNNING, lease_owner="w1", created_ago=timedelta(0))
    response = viewer_client.get(f"/runs/rows/?{query}", **HTMX)
    html = " ".join(response.content.decode().split())
    assert response.status_code == 200
    assert '<nav id="run-counts" class="counts" aria-label="Runs by status" hx-swap-oob="true">' in html
    assert '<template> <tbody id="run-rows" hx-swap-oob="true">' in html
    assert 'id="run-pager" hx-swap-oob="true"' in html
    assert f'id="run-{new.pk}"' in html  # a run started meanwhile appears
    row = html[html.index(f'id="run-{failed.pk}"') :]
    assert "st-succeeded" in row[: row.index("</tr>")]
    # The next poll carries the new stamp.
    assert f"v={Run.objects.last_change()}" in html
    assert viewer_client.get(f"/runs/rows/?{live_query(viewer_client)}", **HTMX).status_code == 204


def test_live_rows_keep_the_filters_and_the_page(viewer_client):
    failed = make_failed_run()
    query = live_query(viewer_client, "status=failed")
    other = make_run(Status.SUCCEEDED)
    html = viewer_client.get(f"/runs/rows/?{query}", **HTMX).content.decode()
    assert f'id="run-{failed.pk}"' in html
    assert f'id="run-{other.pk}"' not in html


def test_live_rows_keep_the_selection(operator_client):
    running = make_run(Status.RUNNING, 1, lease_owner="w1")
    other = make_run(Status.RUNNING, 1, lease_owner="w1")
    html = operator_client.get(f"/runs/rows/?v=old&run={running.pk}").content.decode()
    assert f'value="{running.pk}" aria-label="select run {running.pk}" checked' in html
    assert f'value="{other.pk}" aria-label="select run {other.pk}">' in html


def test_live_rows_report_bad_values_without_failing(viewer_client):
    make_run()
    response = viewer_client.get("/runs/rows/?v=x&run=abc,,-1," + "9" * 40 + "&before=zz&status=bogus")
    assert response.status_code == 200


def test_live_rows_use_a_constant_number_of_queries(viewer_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            viewer_client.get("/runs/rows/?v=old")
        return len(queries)

    for _ in range(2):
        make_run(Status.RUNNING, 1, lease_owner="w")
    few = count()
    for _ in range(30):
        make_run(Status.RUNNING, 2, lease_owner="w")
    assert count() == few


def test_failed_rows_carry_a_resume_and_signal_waits_the_decision(operator_client):
    failed = make_failed_run()
    waiting = make_waiting_run("approval")
    html = operator_client.get("/").content.decode()
    assert f'form="row-resume-{failed.pk}" aria-label="resume run {failed.pk}">Resume…</button>' in html
    resume_url = f"/runs/{failed.pk}/resume/"
    resume_form = f'<form id="row-resume-{failed.pk}" method="post" action="{resume_url}" data-confirm'
    assert resume_form in html
    # Its confirmation is drawn from the page's one dialog template, with the form's question.
    form = html[html.index(resume_form) :]
    form = form[: form.index("</form>")]
    assert f'data-question="Resume run #{failed.pk} (' in form and 'data-verb="resume"' in form
    assert html.count('<template id="confirm-dialog-template">') == 1
    template = html[html.index('<template id="confirm-dialog-template">') :]
    assert 'name="reason"' in template[: template.index("</template>")]
    assert f'form="row-approve-{waiting.pk}"' in html and f'form="row-reject-{waiting.pk}"' in html
    assert f'action="/inbox/{waiting.pk}/decide/"' in html
    row = html[html.index(f'id="run-{waiting.pk}"') :]
    assert "needs decision" in row[: row.index("</tr>")]
    assert "1</span> awaiting a decision" in html


def test_a_row_resume_lands_on_the_confirmation_then_resumes(operator_client):
    failed = make_failed_run()
    confirm = operator_client.post(f"/runs/{failed.pk}/resume/")
    assert confirm.status_code == 200
    assert f"Resume run {failed.pk}" in confirm.content.decode()
    done = operator_client.post(f"/runs/{failed.pk}/resume/", {"confirmed": "yes"})
    assert done.status_code == 303
    failed.refresh_from_db()
    assert failed.status == Status.PENDING


def test_viewers_get_no_row_actions(viewer_client):
    make_failed_run()
    make_waiting_run("approval")
    html = viewer_client.get("/").content.decode()
    assert "row-resume-" not in html and "row-approve-" not in html


# --- overview ------------------------------------------------------------------------


def overview_of(client) -> dict:
    return client.get(reverse("run_overview")).context["overview"]


def test_the_list_loads_the_overview_after_itself(viewer_client):
    html = viewer_client.get("/").content.decode()
    assert 'hx-get="/overview/" hx-trigger="load"' in html
    assert '<noscript><a href="/overview/">' in html


def test_the_overview_is_a_fragment_for_htmx_and_a_page_without(viewer_client):
    fragment = viewer_client.get(reverse("run_overview"), **HTMX).content.decode()
    assert fragment.lstrip().startswith('<section id="overview" class="overview"')
    assert 'hx-trigger="every 60s"' in fragment
    assert "<html" in viewer_client.get(reverse("run_overview")).content.decode()


def test_the_overview_is_cached_briefly(viewer_client):
    viewer_client.get(reverse("run_overview"), **HTMX)
    with CaptureQueriesContext(connection) as queries:
        viewer_client.get(reverse("run_overview"), **HTMX)
    assert not any("runs_run" in query["sql"] for query in queries.captured_queries)


def test_the_overview_needs_view_permission(client):
    from tests.factories import make_user

    client.force_login(make_user("nobody"))
    assert client.get(reverse("run_overview")).status_code == 403


def test_the_overview_counts_the_last_day(viewer_client):
    make_run(Status.SUCCEEDED, 2)
    make_run(Status.SUCCEEDED, 2)
    make_failed_run()
    dead = make_run(Status.DEAD, 1, recovery_count=6)
    make_run(Status.FAILED, 0, created_ago=timedelta(days=3))  # outside the window
    AuditEntry.record(dead, "recover", None, reason="lease lapsed")
    overview = overview_of(viewer_client)
    assert overview["started"] == 4
    assert overview["failed"] == 2
    assert overview["failure_rate"] == pytest.approx(0.5)
    assert overview["recoveries"] == 1
    assert sum(sum(v for k, v in hour.items() if k != "hour") for hour in overview["hours"]) == 4


def hour_counts(overview: dict, hours_ago: int) -> dict:
    return {k: v for k, v in overview["hours"][-1 - hours_ago].items() if k != "hour"}


def test_a_past_hour_is_counted_again_only_once_one_of_its_runs_changed(viewer_client):
    from runs.models import OutcomeHour

    earlier = {"created_ago": timedelta(hours=3), "updated_at": timezone.now() - timedelta(hours=3)}
    waiting = make_run(Status.WAITING, 1, **earlier)
    make_run(Status.SUCCEEDED, 1, **earlier)
    assert hour_counts(overview_of(viewer_client), 3) == {"waiting": 1, "succeeded": 1}
    stored = OutcomeHour.objects.get(hour=overview_of(viewer_client)["hours"][-4]["hour"])
    assert stored.counts == {"waiting": 1, "succeeded": 1}

    # Unchanged runs: the stored count is read, not recounted (tampered here to show it).
    OutcomeHour.objects.filter(pk=stored.pk).update(counts={"waiting": 7})
    cache.delete(overview_views.OVERVIEW_CACHE_KEY)
    assert hour_counts(overview_of(viewer_client), 3) == {"waiting": 7}

    # A run of that hour changes: its hour is counted again, the others are not read.
    waiting.cancel(by="operator", reason="no longer needed")
    cache.delete(overview_views.OVERVIEW_CACHE_KEY)
    assert hour_counts(overview_of(viewer_client), 3) == {"cancelled": 1, "succeeded": 1}


def test_the_current_hour_is_always_counted_afresh(viewer_client):
    from runs.models import OutcomeHour

    make_run(Status.SUCCEEDED, 1, created_ago=timedelta(seconds=1))
    assert hour_counts(overview_of(viewer_client), 0) == {"succeeded": 1}
    assert not OutcomeHour.objects.filter(hour=overview_of(viewer_client)["hours"][-1]["hour"]).exists()
    make_run(Status.FAILED, 1, created_ago=timedelta(seconds=1))
    cache.delete(overview_views.OVERVIEW_CACHE_KEY)
    assert hour_counts(overview_of(viewer_client), 0) == {"succeeded": 1, "failed": 1}


def test_the_overview_reports_step_duration_percentiles(viewer_client):
    make_run(Status.SUCCEEDED, 3)
    make_run(Status.SUCCEEDED, 3)
    steps = {row["name"]: row for row in overview_of(viewer_client)["steps"]}
    assert steps["step_0"]["count"] == 2
    assert steps["step_0"]["p50"] == pytest.approx(0.5)
    assert steps["step_0"]["p95"] == pytest.approx(0.5)


def test_the_database_and_python_agree_on_step_percentiles():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no percentile_disc: Python computes them there")
    from steps.models import Checkpoint

    for steps in (1, 2, 3, 5, 8, 13, 21):
        make_run(Status.SUCCEEDED, steps)
    for index, checkpoint in enumerate(Checkpoint.objects.order_by("pk")):  # durations spread out
        seconds = (index * 7919) % 97 / 10
        Checkpoint.objects.filter(pk=checkpoint.pk).update(
            finished_at=checkpoint.started_at + timedelta(seconds=seconds)
        )
    since = timezone.now() - timedelta(days=1)
    in_python = sorted(
        (name, n, round(p50, 6), round(p95, 6))
        for name, n, p50, p95 in overview_views.step_percentiles(since)
    )
    in_sql = sorted(
        (name, n, round(float(p50), 6), round(float(p95), 6))
        for name, n, p50, p95 in overview_views.step_percentiles_in_sql(since)
    )
    assert in_sql == in_python and len(in_sql) == 21


def test_percentiles_use_the_nearest_rank():
    values = [float(n) for n in range(1, 101)]
    assert overview_views.percentile(values, 0.5) == 50
    assert overview_views.percentile(values, 0.95) == 95
    assert overview_views.percentile([3.0], 0.95) == 3


def test_the_overview_draws_runs_per_hour(viewer_client):
    make_run(Status.SUCCEEDED)
    make_failed_run()
    html = viewer_client.get(reverse("run_overview"), **HTMX).content.decode()
    assert '<svg class="hourly"' in html
    assert 'class="seg st-succeeded"' in html
    assert 'class="seg st-failed"' in html


def test_the_overview_says_when_nothing_happened(viewer_client):
    response = viewer_client.get(reverse("run_overview"))
    assert response.context["overview"]["failure_rate"] is None
    assert "No step finished in the last 24 hours." in response.content.decode()


def test_waiting_rows_say_what_they_wait_for(viewer_client):
    make_run(Status.WAITING, 1, wait_kind=WaitKind.SIGNAL, wait_signal="approve")
    assert "signal “approve”" in viewer_client.get("/").content.decode()


# --- text search, a window at a time -------------------------------------------------------


def test_a_text_search_reads_one_window_of_runs_at_a_time(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "SEARCH_WINDOW", 4)
    runs = [make_run(steps=0, input={"x": "needle" if index % 2 else "hay"}) for index in range(10)]
    needles = [run.pk for run in reversed(runs) if run.input["x"] == "needle"]

    first = viewer_client.get("/?q=needle")
    page = first.context["page"]
    assert row_ids(first) == needles[:2]  # the 4 newest runs hold 2 needles
    low, high = page.searched
    assert (high - low, high) == (4, runs[-1].pk + 1)
    assert page.older == low
    assert "these results and the counts above cover runs" in first.content.decode()
    counts = {count["status"]: count for count in first.context["counts"]}
    assert (counts[""]["count"], counts[""]["capped"]) == (2, False)

    second = viewer_client.get(f"/?q=needle&before={page.older}")
    assert row_ids(second) == needles[2:4]
    assert second.context["page"].newer == low - 1
    back = viewer_client.get(f"/?q=needle&after={second.context['page'].newer}")
    assert row_ids(back) == needles[:2]


def test_a_run_id_is_found_outside_the_search_window(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "SEARCH_WINDOW", 2)
    wanted = make_run(input={"x": "alpha"})
    for _ in range(5):
        make_run(input={"x": "beta"})
    assert row_ids(viewer_client.get(f"/?q=%23{wanted.pk}")) == [wanted.pk]
    assert row_ids(viewer_client.get(f"/?q={wanted.pk}&status=succeeded")) == [wanted.pk]
    assert row_ids(viewer_client.get(f"/?q={wanted.pk}&status=failed")) == []


def test_a_search_with_no_match_in_its_window_offers_the_next(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "SEARCH_WINDOW", 3)
    old = make_run(input={"x": "needle"})
    for _ in range(6):
        make_run(input={"x": "hay"})
    page = viewer_client.get("/?q=needle").context["page"]
    assert page.runs == []
    assert page.older is not None
    while old.pk not in [run.pk for run in page.runs]:
        assert page.older, "the search never reached the old run"
        page = viewer_client.get(f"/?q=needle&before={page.older}").context["page"]


# --- started between: ordered by start time --------------------------------------------------


def test_filtered_by_start_time_the_list_is_ordered_by_start_time(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "PAGE_SIZE", 2)
    ages = [5, 1, 4, 2, 3]  # hours; ids do not follow start times
    runs = [make_run(steps=0, created_ago=timedelta(hours=age)) for age in ages]
    by_start = [run.pk for run in sorted(runs, key=lambda run: run.created_at, reverse=True)]
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")

    first = viewer_client.get(f"/?started_after={since}")
    assert row_ids(first) == by_start[:2]
    second = viewer_client.get(f"/?started_after={since}&before={first.context['page'].older}")
    assert row_ids(second) == by_start[2:4]
    assert second.context["page"].newer == by_start[2]
    back = viewer_client.get(f"/?started_after={since}&after={second.context['page'].newer}")
    assert row_ids(back) == by_start[:2]


def test_counts_filtered_by_start_time_are_lower_bounds_beyond_a_sample(viewer_client, monkeypatch):
    monkeypatch.setattr(list_views, "START_SAMPLE", 3)
    for status in ("failed", "failed", "succeeded", "succeeded", "running"):
        make_run(status, 1, lease_owner="w")
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    counts = {c["status"]: c for c in viewer_client.get(f"/?started_after={since}").context["counts"]}
    assert (counts[""]["count"], counts[""]["capped"]) == (3, True)
    assert all(
        counts[status]["capped"] for status in ("failed", "succeeded", "running") if counts[status]["count"]
    )
    assert not counts[Status.DEAD]["capped"]
    monkeypatch.setattr(list_views, "START_SAMPLE", 10)
    counts = {c["status"]: c for c in viewer_client.get(f"/?started_after={since}").context["counts"]}
    assert (counts[""]["count"], counts[""]["capped"]) == (5, False)
    assert counts[Status.FAILED]["count"] == 2


# --- filter values -----------------------------------------------------------------------


def test_the_workflow_filter_takes_the_start_of_registered_names(viewer_client):
    import tests.workflows  # noqa: F401  (registers "approval")

    approval = make_run(workflow="approval")
    other = make_run(workflow="counter")
    assert row_ids(viewer_client.get("/?workflow=appro")) == [approval.pk]
    assert row_ids(viewer_client.get("/?workflow=counter")) == [other.pk]
    assert row_ids(viewer_client.get("/?workflow=zzz")) == []


@pytest.mark.parametrize(
    "query", ["status=bogus", "started_after=notadate", "started_before=2025-13-45T99:99"]
)
def test_a_bad_filter_is_named_and_the_list_says_it_is_not_filtered_by_it(viewer_client, query):
    runs = [make_run(Status.SUCCEEDED).pk, make_failed_run().pk]
    response = viewer_client.get(f"/?{query}")
    assert response.status_code == 200
    assert sorted(row_ids(response)) == sorted(runs)
    html = response.content.decode()
    assert '<div class="filter-errors" role="alert">' in html
    assert "The list below is not filtered by these" in html
    bad = query.split("=", 1)[1]
    assert f"“{bad}”" in html
    assert f"v={Run.objects.last_change()}" in html and bad not in live_query(viewer_client, query)
