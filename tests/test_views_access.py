"""Who may see what: login everywhere, view permission for pages, the login page itself."""

import pytest
from django.urls import reverse

from tests.factories import PASSWORD, make_failed_run, make_operator, make_user, make_viewer

pytestmark = pytest.mark.django_db


def pages(run) -> list[str]:
    checkpoint = run.checkpoints.first()
    return [
        reverse("run_list"),
        reverse("run_overview"),
        reverse("run_rows") + f"?ids={run.pk}",
        reverse("run_detail", args=[run.pk]),
        reverse("run_live", args=[run.pk]),
        reverse("run_value", args=[run.pk, "input"]),
        reverse("checkpoint_detail", args=[run.pk, checkpoint.pk]),
        reverse("run_step", args=[run.pk, checkpoint.position]),
    ]


def test_every_page_sends_anonymous_users_to_login(client):
    run = make_failed_run()
    for url in pages(run):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next="), url


def test_every_page_refuses_users_without_view_permission(client):
    client.force_login(make_user("stranger"))
    run = make_failed_run()
    for url in pages(run):
        assert client.get(url).status_code == 403, url


@pytest.mark.parametrize("make", [make_viewer, make_operator])
def test_every_page_opens_for_viewers_and_operators(client, make):
    client.force_login(make())
    run = make_failed_run()
    for url in pages(run):
        assert client.get(url).status_code in (200, 286), url


def test_the_403_page_names_the_missing_permission_and_offers_another_login(client):
    client.force_login(make_user("stranger"))
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 403
    assert "needs the “runs.view_run” permission" in html
    assert "signed in as <strong>stranger</strong>" in html
    assert "Back to the runs" not in html  # it would only lead back here
    assert "Log in as someone else" in html


def test_a_viewer_refused_an_action_is_told_what_it_needs_and_sent_back_to_the_runs(client):
    client.force_login(make_viewer())
    run = make_failed_run()
    response = client.post(reverse("run_resume", args=[run.pk]))
    html = response.content.decode()
    assert response.status_code == 403
    assert "needs the “runs.operate” permission" in html
    assert '<a href="/">Back to the runs</a>' in html


def test_the_login_page_is_styled_like_the_rest(client):
    response = client.get(reverse("login"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "/static/runs/app.css" in html
    assert '<section class="login">' in html


def test_logging_in_lands_on_the_run_list(client):
    make_viewer("vera")
    response = client.post(reverse("login"), {"username": "vera", "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == "/"
    assert "vera" in response.content.decode()


def test_a_wrong_password_is_reported(client):
    make_viewer("vera")
    response = client.post(reverse("login"), {"username": "vera", "password": "nope"})
    assert "Please enter a correct username and password" in response.content.decode()


def test_viewers_and_operators_are_labelled(client):
    client.force_login(make_operator("olga"))
    assert "olga <small>operator</small>" in client.get("/").content.decode()


def test_an_expired_session_sends_htmx_to_the_login_page(client):
    run = make_failed_run()
    response = client.get(
        reverse("run_live", args=[run.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL=f"http://testserver/runs/{run.pk}/",
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/accounts/login/?next=/runs/{run.pk}/"
