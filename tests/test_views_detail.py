"""The run page, its live section, a checkpoint's page and a run's whole input or output."""

import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runs.models import AuditEntry, Run, Signal, Status, WaitKind, WorkerProcess
from runs.templatetags.dashboard import JSON_CAP, build_timeline, duration, json_block
from runs.views.run_page import INLINE_STEPS, PREVIEW_CHARS, StepRow, step_rows
from steps.models import Attempt, Branch, Checkpoint, CheckpointStatus
from tests.factories import make_failed_run, make_operator, make_run, make_viewer, make_waiting_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def viewer_client(client):
    client.force_login(make_viewer())
    return client


@pytest.fixture
def operator_client(client):
    client.force_login(make_operator())
    return client


def page(client, run, **extra) -> str:
    response = client.get(reverse("run_detail", args=[run.pk]), **extra)
    assert response.status_code == 200
    return response.content.decode()


def test_it_shows_the_header(viewer_client):
    run = make_run(Status.RUNNING, 2, lease_owner="worker-1@host:42", recovery_count=2)
    html = page(viewer_client, run)
    assert f"#{run.pk}</span> arithmetic" in html
    assert 'id="run-status">running<' in html
    assert run.idempotency_key[:8] + "…" in html
    assert "worker-1@host:42" in html
    assert "<dt>Recoveries</dt><dd>2</dd>" in html
    assert "&quot;a&quot;: 1" in html  # the input, pretty


def test_it_lists_steps_with_attempts_and_tracebacks(viewer_client):
    run = make_failed_run(steps=3, attempts_per_step=2)
    html = page(viewer_client, run)
    for position in range(3):
        assert f'id="step-{position}"' in html
    assert html.count('class="attempt"') == 6
    assert "attempt 2 timed out" in html
    assert '<details class="traceback"><summary>traceback</summary><pre>Traceback' in html
    assert "bad value from the tool" in html


def test_it_marks_superseded_checkpoints_and_keeps_them(viewer_client):
    run = make_run(Status.SUCCEEDED, 3)
    Checkpoint.objects.filter(run=run, position__gte=1).update(superseded_at=timezone.now())
    Checkpoint.objects.create(
        run=run,
        position=1,
        name="step_1",
        status=CheckpointStatus.SUCCEEDED,
        output={"value": "again"},
        epoch=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    html = page(viewer_client, run)
    assert html.count('class="superseded-cp"') == 2
    assert html.count('<span class="tag">superseded ') == 2
    assert "&quot;again&quot;" in html
    assert 'class="bar tl-succeeded superseded"' in html


def test_it_shows_the_failure_and_the_audit_log(viewer_client):
    run = make_failed_run()
    AuditEntry.record(run, "resume", "alice", reason="provider fixed", details={"superseded_from": 2})
    html = page(viewer_client, run)
    assert "Failure at step #2" in html
    assert "provider fixed" in html
    assert "alice" in html
    assert "superseded_from" in html


def test_it_draws_a_timeline_bar_per_step_and_attempt(viewer_client):
    run = make_failed_run(steps=3, attempts_per_step=1)
    html = page(viewer_client, run)
    assert '<svg class="timeline"' in html
    assert html.count('class="bar tl-attempt"') == 3
    assert html.count('class="bar tl-succeeded"') == 2
    assert html.count('class="bar tl-failed"') == 1
    assert "<title>#2 step_2 · failed · 500 ms</title>" in html


def test_large_outputs_are_collapsed_cut_and_linked(viewer_client):
    big = {"text": "x" * (JSON_CAP + 5000)}
    run = make_run(Status.SUCCEEDED, 1, output=big)
    checkpoint = run.checkpoints.get()
    html = page(viewer_client, run)
    assert '<details class="json">' in html
    assert "Show the whole value" in html
    assert "x" * (JSON_CAP + 100) not in html
    full = viewer_client.get(reverse("checkpoint_detail", args=[run.pk, checkpoint.pk])).content.decode()
    assert "x" * (JSON_CAP + 5000) in full


def test_small_outputs_are_shown_on_one_line(viewer_client):
    run = make_run(Status.SUCCEEDED, 1)
    assert '<pre class="json one-line">{&quot;value&quot;: 0}</pre>' in page(viewer_client, run)


def test_it_shows_signals(viewer_client):
    run = make_waiting_run()
    Signal.objects.create(run=run, name="approve", payload={"approved": True}, sent_by="otto")
    html = page(viewer_client, run)
    assert "<h2>Signals</h2>" in html
    assert "otto" in html


def test_viewers_see_no_action_buttons(viewer_client):
    for run in (make_failed_run(), make_waiting_run(), make_run(Status.SUCCEEDED)):
        html = page(viewer_client, run)
        assert '<form class="action"' not in html
        assert "Send a signal" not in html
        assert "Edit output" not in html


def test_operators_see_the_actions_the_state_allows(operator_client):
    failed = page(operator_client, make_failed_run())
    assert ">Resume</button>" in failed
    assert "Retry from here" in failed
    assert "Edit output…" in failed
    assert "Cancel run" not in failed

    waiting = page(operator_client, make_waiting_run())
    assert ">Approve</button>" in waiting
    assert "Cancel run" in waiting
    assert "Send a signal" in waiting
    assert ">Resume</button>" not in waiting
    assert "Retry from here" not in waiting

    succeeded = page(operator_client, make_run(Status.SUCCEEDED))
    assert "Retry from here" in succeeded
    assert ">Resume</button>" not in succeeded
    assert "Edit output…" not in succeeded


def test_action_forms_post_with_a_confirmation(operator_client):
    run = make_failed_run()
    html = page(operator_client, run)
    url = reverse("run_resume", args=[run.pk])
    assert f'<form class="action" method="post" action="{url}"' in html
    assert f'hx-post="{url}"' in html
    assert "hx-confirm=" not in html  # one confirmation pattern: the form's <dialog>
    forms = re.findall(r"<form[^>]*\sdata-confirm[\s>]", html)
    assert forms and html.count("<dialog") == len(forms)  # each confirmed form holds its dialog
    assert 'name="confirmed" value=""' in html
    assert 'id="action-reason"' not in html  # the reason is asked inside each dialog
    assert 'name="csrfmiddlewaretoken"' in html


def test_the_csrf_token_is_set_once_for_htmx(operator_client):
    html = page(operator_client, make_failed_run())
    assert '<body hx-headers=\'{"x-csrftoken": "' in html


def test_it_polls_fast_while_active_and_slowly_after(viewer_client):
    running = make_run(Status.RUNNING, 1, lease_owner="w1")
    html = page(viewer_client, running)
    assert f'hx-get="/runs/{running.pk}/live/?v=' in html
    assert 'hx-trigger="every 2s, visibilitychange from:document"' in html
    finished = page(viewer_client, make_run(Status.SUCCEEDED))
    # A finished run keeps a slow poll: changes made elsewhere show within 10 s.
    assert 'hx-trigger="every 8s, visibilitychange from:document"' in finished


def test_the_live_section_answers_204_while_nothing_changed(viewer_client):
    run = make_run(Status.RUNNING, 1, lease_owner="w1")
    version = f"{run.updated_at.timestamp():.6f}"
    url = reverse("run_live", args=[run.pk])
    assert viewer_client.get(f"{url}?v={version}", **HTMX).status_code == 204

    Run.objects.filter(pk=run.pk).update(steps_done=2, updated_at=timezone.now())
    response = viewer_client.get(f"{url}?v={version}", **HTMX)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<section id="run-live"')


def test_a_finished_runs_live_section_shows_a_change_made_elsewhere(viewer_client):
    run = make_run(Status.FAILED, 2, failed_at=1)
    url = reverse("run_live", args=[run.pk])
    version = f"{run.updated_at.timestamp():.6f}"
    assert viewer_client.get(f"{url}?v={version}", **HTMX).status_code == 204
    run.resume(by="someone-else", reason="from the CLI")
    response = viewer_client.get(f"{url}?v={version}", **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="run-status">pending<' in html
    assert 'hx-trigger="every 2s' in html  # active again: it polls fast


def test_it_serves_the_live_fragment_to_htmx(viewer_client):
    run = make_run()
    html = page(viewer_client, run, HTTP_HX_TARGET="run-live", **HTMX)
    assert html.lstrip().startswith('<section id="run-live"')


def test_it_answers_404_for_unknown_runs(viewer_client):
    assert viewer_client.get("/runs/999999/").status_code == 404


def test_the_whole_input_and_output(viewer_client):
    run = make_run(Status.SUCCEEDED, 1, input={"q": "y" * 30_000})
    Run.objects.filter(pk=run.pk).update(output={"answer": "z" * 30_000})
    assert "y" * 30_000 in viewer_client.get(reverse("run_value", args=[run.pk, "input"])).content.decode()
    assert "z" * 30_000 in viewer_client.get(reverse("run_value", args=[run.pk, "output"])).content.decode()
    assert viewer_client.get(reverse("run_value", args=[run.pk, "error_traceback"])).status_code == 404


def test_the_checkpoint_page(viewer_client):
    run = make_failed_run(attempts_per_step=1)
    failed = run.checkpoints.get(position=2)
    html = viewer_client.get(reverse("checkpoint_detail", args=[run.pk, failed.pk])).content.decode()
    assert "bad value from the tool" in html
    assert "Failed attempts at this position" in html
    assert "Replace this output" not in html  # viewers cannot edit


def test_the_checkpoint_page_offers_the_edit_form_to_operators(operator_client):
    run = make_failed_run()
    checkpoint = run.checkpoints.get(position=1)
    url = reverse("checkpoint_detail", args=[run.pk, checkpoint.pk])
    html = operator_client.get(url).content.decode()
    # A step before the failed one: its edit runs the steps after it again.
    assert "Edit and continue from here" in html
    assert reverse("checkpoint_edit_and_continue", args=[run.pk, 1]) in html
    assert "{\n  &quot;value&quot;: 1\n}</textarea>" in html  # the old value, ready to edit
    failed = run.checkpoints.get(position=2)
    html = operator_client.get(reverse("checkpoint_detail", args=[run.pk, failed.pk])).content.decode()
    assert "Replace this output and resume" in html  # the failed step itself: a plain edit
    assert reverse("checkpoint_edit", args=[run.pk, 2]) in html

    fragment = operator_client.get(url, HTTP_HX_TARGET=f"edit-slot-{checkpoint.pk}", **HTMX).content.decode()
    assert fragment.lstrip().startswith(f'<div id="edit-form-{checkpoint.pk}"')
    assert 'hx-target="#run-live"' in fragment


def test_a_checkpoint_of_another_run_is_not_found(viewer_client):
    run, other = make_run(), make_run()
    checkpoint = other.checkpoints.first()
    assert viewer_client.get(reverse("checkpoint_detail", args=[run.pk, checkpoint.pk])).status_code == 404


def test_it_escapes_untrusted_step_output_and_errors(viewer_client):
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
    run = make_failed_run(output={"text": payload})
    Run.objects.filter(pk=run.pk).update(error_message=payload, error_type="<b>Boom</b>")
    Attempt.objects.create(
        run=run,
        position=2,
        name=payload,
        number=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        error_type=payload,
        error_message=payload,
        error_traceback=payload,
    )
    AuditEntry.record(run, "resume", payload, reason=payload, details={"x": payload})
    html = page(viewer_client, run)
    assert "<script>window.__xss" not in html
    assert "<img src=x" not in html
    assert "<b>Boom</b>" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def count_queries(client, run) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("run_detail", args=[run.pk])).status_code == 200
    return len(queries)


def test_it_issues_the_same_number_of_queries_for_any_number_of_steps(operator_client):
    small = make_failed_run(steps=2, attempts_per_step=1)
    big = make_failed_run(steps=40, attempts_per_step=2)
    AuditEntry.record(big, "resume", "alice")
    Signal.objects.create(run=big, name="x")
    assert count_queries(operator_client, small) == count_queries(operator_client, big)


def test_a_thousand_step_run_stays_fast(viewer_client, django_assert_max_num_queries):
    run = make_run(Status.SUCCEEDED, 0)
    now = timezone.now()
    Checkpoint.objects.bulk_create(
        Checkpoint(
            run=run,
            position=position,
            name="llm_call" if position % 2 else "tool_call",
            status=CheckpointStatus.SUCCEEDED,
            output={"position": position, "text": "ok " * 20},
            started_at=now + timedelta(seconds=position),
            finished_at=now + timedelta(seconds=position, milliseconds=400),
        )
        for position in range(1000)
    )
    Attempt.objects.bulk_create(
        Attempt(
            run=run,
            position=position,
            name="llm_call",
            number=1,
            started_at=now,
            finished_at=now,
            error_type="RateLimitError",
        )
        for position in range(0, 1000, 10)
    )
    Run.objects.filter(pk=run.pk).update(steps_done=1000)
    started = time.monotonic()
    # session, user, permissions (2), run, checkpoints, attempts, branches, audit, signals, children,
    # model usage, runs awaiting a decision (the navigation's inbox count)
    with django_assert_max_num_queries(13):
        html = page(viewer_client, run)
    assert time.monotonic() - started < 5
    assert html.count('class="step st-succeeded"') == 1000
    assert html.count('class="bar tl-attempt"') == 100


def test_waiting_runs_say_what_they_wait_for(viewer_client):
    run = make_run(Status.WAITING, 1, wait_kind=WaitKind.RETRY, wake_at=timezone.now() + timedelta(minutes=2))
    html = page(viewer_client, run)
    assert "retry backoff, wakes <time datetime=" in html and ">in 1 m " in html


# --- the pieces --------------------------------------------------------------------------


def test_step_rows_group_checkpoints_and_attempts_by_position():
    now = timezone.now()
    live = Checkpoint(position=0, name="a", status="succeeded", started_at=now, finished_at=now)
    old = Checkpoint(
        position=0, name="a", status="failed", started_at=now, finished_at=now, superseded_at=now
    )
    retrying = Attempt(position=1, name="b", number=1, started_at=now, finished_at=now)
    rows = step_rows([old, live], [retrying])
    assert [row.position for row in rows] == [0, 1]
    assert rows[0].checkpoint is live and rows[0].superseded == [old]
    assert rows[0].all_checkpoints == [old, live]
    assert rows[1].status == "retrying"
    assert StepRow(2, "c", superseded=[old]).status == "superseded"


def test_the_timeline_scales_lanes_to_fit():
    now = timezone.now()
    steps = [
        StepRow(
            position,
            "s",
            checkpoint=Checkpoint(
                position=position,
                name="s",
                status="succeeded",
                started_at=now + timedelta(seconds=position),
                finished_at=now + timedelta(seconds=position + 1),
            ),
        )
        for position in range(1000)
    ]
    timeline = build_timeline(Run(status=Status.SUCCEEDED), steps)
    assert len(timeline.lanes) == 1000
    assert timeline.height < 600
    assert not timeline.show_labels
    assert timeline.lanes[0].bars[0].x < timeline.lanes[-1].bars[0].x


def test_the_timeline_needs_something_to_draw():
    assert build_timeline(Run(status=Status.PENDING), []) is None


def test_json_blocks_cut_at_the_cap():
    block = json_block({"text": "x" * 100}, cap=50)
    assert block.truncated
    assert len(block.text) == 50
    assert block.size > 100


@pytest.mark.parametrize(
    "seconds, text",
    [(0.25, "250 ms"), (4.2, "4.2 s"), (185, "3 m 05 s"), (7800, "2 h 10 m"), (3 * 86400 + 7200, "3 d 2 h")],
)
def test_durations_read_well(seconds, text):
    assert duration(seconds) == text
    assert duration(timedelta(seconds=seconds)) == text
    assert duration(None) == "–"


def test_it_shows_parallel_branches(viewer_client):
    run = make_run(Status.WAITING, 1, wait_kind="branches")
    now = timezone.now()
    common = {
        "run": run,
        "position": 1,
        "name": "fetch_page",
        "target": "agentkit.tools:fetch",
        "started_at": now,
    }
    Branch.objects.create(
        **common,
        index=0,
        status="succeeded",
        output={"ok": 1},
        attempts=1,
        finished_at=now + timedelta(seconds=2),
    )
    Branch.objects.create(
        **common, index=1, status="failed", error_type="TimeoutError", error_message="slow", finished_at=now
    )
    Branch.objects.create(**common, index=2, status="running")
    html = page(viewer_client, run)
    assert 'id="step-1" class="step st-running"' in html
    assert '<table class="compact branches">' in html
    assert "2.0 s" in html
    assert "TimeoutError" in html
    assert html.count("fetch_page") >= 3
    assert 'class="bar tl-running"' in html


def test_it_links_parent_and_child_runs(viewer_client):
    parent = make_run(Status.WAITING, 1)
    child = make_failed_run(parent=parent, parent_position=0)
    assert f'<a href="/runs/{child.pk}/">#{child.pk} arithmetic</a>' in page(viewer_client, parent)
    assert f'<a href="/runs/{parent.pk}/">#{parent.pk}</a>' in page(viewer_client, child)


def test_it_says_whether_the_lease_holder_is_alive(viewer_client):
    run = make_run(Status.RUNNING, 1, lease_owner="w1@host:1")
    assert '<span class="tag bad">lapsed</span>' in page(viewer_client, run)
    WorkerProcess.objects.create(name="w1@host:1", hostname="host", pid=1)
    assert '<span class="tag ok">alive</span>' in page(viewer_client, run)


def test_branches_and_children_keep_the_query_count_constant(viewer_client):
    def with_extras(branches: int, children: int) -> Run:
        run = make_run(Status.WAITING, 2)
        now = timezone.now()
        for index in range(branches):
            Branch.objects.create(run=run, position=2, index=index, name="b", target="m:f", started_at=now)
        for _ in range(children):
            make_run(parent=run, parent_position=1)
        return run

    assert count_queries(viewer_client, with_extras(1, 1)) == count_queries(
        viewer_client, with_extras(20, 12)
    )


def test_compact_collapses_indentation_between_tags_only():
    from django.template import engines

    body = "<p>\n  <b>a</b>\n  <i>b</i>\n</p><pre>{\n  1\n}</pre>"
    source = "{% load dashboard %}{% compact %}" + body + "{% endcompact %}"
    assert engines["django"].from_string(source).render() == "<p> <b>a</b> <i>b</i> </p><pre>{\n  1\n}</pre>"


def test_branch_progress_refreshes_the_live_section(viewer_client):
    run = make_run(Status.WAITING, 1, wait_kind="branches", wait_position=1)
    branch = Branch.objects.create(
        run=run, position=1, index=0, name="b", target="m:f", started_at=timezone.now()
    )
    url = reverse("run_live", args=[run.pk])
    first = viewer_client.get(url, **HTMX).content.decode()
    version = first.split("?v=", 1)[1].split('"', 1)[0]
    assert viewer_client.get(f"{url}?v={version}", **HTMX).status_code == 204
    Branch.objects.filter(pk=branch.pk).update(status="succeeded", finished_at=timezone.now(), attempts=1)
    assert viewer_client.get(f"{url}?v={version}", **HTMX).status_code == 200


# --- export and code version -------------------------------------------------------------


def test_it_links_the_export(viewer_client):
    run = make_run(Status.SUCCEEDED, 2)
    url = reverse("api:run-export", args=[run.pk])
    assert f'<a href="{url}" download="run-{run.pk}.json">' in page(viewer_client, run)
    response = viewer_client.get(url)  # the signed-in session is enough
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}.json"'
    assert response.json()["run"]["id"] == run.pk


def code_fact(html: str) -> str:
    start = html.index('<dd id="code-version">')
    return " ".join(html[start : html.index("</dd>", start)].split())


def test_it_shows_the_code_version_without_a_warning_when_it_is_deployed(viewer_client):
    import tests.workflows  # noqa: F401  (registers "metered", version 2026-11-27.1)

    fact = code_fact(page(viewer_client, make_run(workflow="metered", code_version="2026-11-27.1")))
    assert '<span class="mono" title="2026-11-27.1">2026-11-27.1</span>' in fact
    assert "warn" not in fact


def test_it_warns_when_the_deployed_code_has_another_version(viewer_client):
    import tests.workflows  # noqa: F401

    fact = code_fact(page(viewer_client, make_run(workflow="metered", code_version="2026-01-01.1")))
    assert "2026-01-01.1" in fact
    assert 'class="tag warn"' in fact
    assert 'deployed: <span class="mono">2026-11-27.1</span>' in fact


def test_it_says_when_the_workflow_is_not_registered_here(viewer_client):
    fact = code_fact(page(viewer_client, make_run(workflow="retired_flow", code_version="src-0123")))
    assert "src-0123" in fact
    assert "workflow not registered here" in fact


def test_it_says_when_no_code_version_was_recorded(viewer_client):
    import tests.workflows  # noqa: F401

    fact = code_fact(page(viewer_client, make_run(workflow="metered", code_version="")))
    assert "not recorded" in fact
    assert "deployed:" not in fact


def test_the_deployed_version_comes_from_the_registry():
    import tests.workflows  # noqa: F401
    from runs.workflow import registry

    assert Run(workflow="arithmetic").deployed_version() == registry.get("arithmetic").version
    assert Run(workflow="retired_flow").deployed_version() is None


# --- long runs: compact step lines ----------------------------------------------------------


def make_long_run(steps: int = INLINE_STEPS + 10, **fields) -> Run:
    run = make_run(Status.FAILED, steps, failed_at=steps - 1, attempts_per_step=1, **fields)
    Run.objects.filter(pk=run.pk).update(steps_done=steps, error_position=steps - 1)
    run.refresh_from_db()
    return run


def test_a_long_run_shows_one_compact_line_per_step(viewer_client):
    run = make_long_run()
    html = page(viewer_client, run)
    assert '<ol class="steps compact">' in html
    assert html.count('<details class="step-more"') == INLINE_STEPS + 10
    for position in (0, INLINE_STEPS + 9):
        url = reverse("run_step", args=[run.pk, position])
        assert f'hx-get="{url}" hx-trigger="toggle once" hx-target="find .step-body"' in html
        assert f'<a href="{url}">Show this step</a>' in html  # the same, without JavaScript
    assert '<span class="preview mono">{&quot;value&quot;: 3}</span>' in html
    assert "bad value from the tool" in html  # the failed step's error is on its line
    assert 'class="attempt"' not in html  # attempts and their tracebacks wait until a step opens
    assert html.count('class="bar tl-attempt"') == INLINE_STEPS + 10  # the timeline has them all


def test_a_short_run_shows_its_steps_in_full(viewer_client):
    html = page(viewer_client, make_failed_run(steps=3, attempts_per_step=1))
    assert '<ol class="steps">' in html
    assert "step-more" not in html
    assert html.count('class="attempt"') == 3


def test_a_compact_lines_preview_is_cut(viewer_client):
    run = make_long_run()
    Checkpoint.objects.filter(run=run, position=0).update(output={"text": "y" * 500})
    html = page(viewer_client, run)
    kept = PREVIEW_CHARS - 1 - len('{"text": "')
    assert '<span class="preview mono">{&quot;text&quot;: &quot;' + "y" * kept + "…</span>" in html


def test_a_step_opens_in_place_with_its_output_attempts_and_actions(operator_client):
    run = make_long_run()
    url = reverse("run_step", args=[run.pk, 3])
    html = operator_client.get(url, **HTMX).content.decode()
    assert not html.lstrip().startswith("<!doctype")
    assert '<pre class="json one-line">{&quot;value&quot;: 3}</pre>' in html
    assert html.count('class="attempt"') == 1
    assert '<details class="traceback">' in html
    assert "Retry from here" in html
    assert "Edit and continue…" in html
    assert 'hx-target="#run-live"' in html


def test_a_step_has_a_page_of_its_own_without_javascript(viewer_client):
    run = make_long_run()
    response = viewer_client.get(reverse("run_step", args=[run.pk, 3]))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith("<!doctype")
    assert f'<a href="/runs/{run.pk}/#step-3">run #{run.pk} arithmetic</a>' in html
    assert '<div class="step" hx-disable>' in html  # its forms post without htmx
    assert "Retry from here" not in html  # viewers


def test_a_step_that_does_not_exist_is_not_found(viewer_client):
    run = make_long_run()
    assert viewer_client.get(reverse("run_step", args=[run.pk, 999])).status_code == 404


def test_a_steps_superseded_checkpoints_show_when_it_opens(viewer_client):
    run = make_long_run()
    Checkpoint.objects.filter(run=run, position=2).update(superseded_at=timezone.now())
    Checkpoint.objects.create(
        run=run,
        position=2,
        name="step_2",
        status=CheckpointStatus.SUCCEEDED,
        output={"value": "again"},
        epoch=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    html = page(viewer_client, run)
    line = html[html.index('id="step-2"') : html.index('id="step-3"')]
    assert '<span class="tag">1 superseded</span>' in line
    assert "epoch 1" in line
    fragment = viewer_client.get(reverse("run_step", args=[run.pk, 2]), **HTMX).content.decode()
    assert fragment.count('class="superseded-cp"') == 1
    assert "&quot;again&quot;" in fragment


def test_compact_lines_escape_untrusted_text(viewer_client):
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
    run = make_long_run()
    Checkpoint.objects.filter(run=run, position=1).update(name=payload, output={"html": payload})
    Checkpoint.objects.filter(run=run, position=run.steps_done - 1).update(
        error_type=payload, error_message=payload
    )
    Attempt.objects.filter(run=run).update(error_type=payload, name=payload)
    html = page(viewer_client, run)
    assert "<script>window.__xss" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    fragment = viewer_client.get(reverse("run_step", args=[run.pk, 1]), **HTMX).content.decode()
    assert "<script>window.__xss" not in fragment


def test_long_and_short_runs_take_the_same_number_of_queries(operator_client):
    short = make_failed_run(steps=2, attempts_per_step=1)
    long = make_long_run()
    assert count_queries(operator_client, short) == count_queries(operator_client, long)


def test_opening_a_step_takes_a_constant_number_of_queries(viewer_client):
    def count(run) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get(reverse("run_step", args=[run.pk, 1]), **HTMX).status_code == 200
        return len(queries)

    assert count(make_long_run()) == count(make_long_run(INLINE_STEPS * 3))


def test_url_filler_matches_reverse():
    from runs.views.common import url_filler

    fill = url_filler("run_step", 42)
    for position in (0, 7, 1000):
        assert fill(position) == reverse("run_step", args=[42, position])


def test_a_compact_line_counts_its_finished_branches(viewer_client):
    run = make_long_run()
    now = timezone.now()
    for index, status in enumerate(["succeeded", "running", "failed"]):
        Branch.objects.create(
            run=run, position=5, index=index, name="b", target="m:f", status=status, started_at=now
        )
    html = page(viewer_client, run)
    line = html[html.index('id="step-5"') : html.index('id="step-6"')]
    assert '<span class="tag">2 of 3 branches done</span>' in line
    fragment = viewer_client.get(reverse("run_step", args=[run.pk, 5]), **HTMX).content.decode()
    assert fragment.count("<tr class=") == 3


def test_a_pending_run_on_a_queue_no_live_worker_consumes_is_flagged(viewer_client):
    run = make_run(Status.PENDING, 0, queue="llm")
    WorkerProcess.beat("w:1:a", "w", 1, ["durable"])
    assert 'id="queue-unserved"' in page(viewer_client, run)
    WorkerProcess.beat("w:2:b", "w", 2, ["llm"])
    assert 'id="queue-unserved"' not in page(viewer_client, run)
