"""Signing in: a session ends with the browser (12 h at most) unless the user stays signed in."""

import pytest
from django.conf import settings

from tests.factories import PASSWORD, make_viewer

pytestmark = pytest.mark.django_db


def log_in(client, **extra):
    make_viewer()
    return client.post("/accounts/login/", {"username": "viola", "password": PASSWORD, **extra})


def test_the_form_offers_to_stay_signed_in(client):
    html = client.get("/accounts/login/").content.decode()
    assert 'name="remember"' in html
    assert "Stay signed in" in html


def test_it_signs_in_until_the_browser_closes(client):
    response = log_in(client)
    assert response.status_code == 302
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert not cookie["max-age"] and not cookie["expires"]  # a browser-session cookie
    assert client.session.get_expire_at_browser_close()
    assert client.session.get_expiry_age() == 12 * 3600  # and the server forgets it after 12 h


def test_staying_signed_in_lasts_two_weeks(client):
    response = log_in(client, remember="on")
    assert response.status_code == 302
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["max-age"] == 14 * 24 * 3600
    assert not client.session.get_expire_at_browser_close()
    assert client.session.get_expiry_age() == 14 * 24 * 3600


def test_a_wrong_password_signs_nobody_in(client):
    response = log_in(client, password="nope", remember="on")
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


# --- brute force -------------------------------------------------------------------------------


def test_it_locks_a_username_out_after_repeated_wrong_passwords(client, settings):
    settings.AXES_FAILURE_LIMIT = 5
    make_viewer()
    for _ in range(5):
        client.post("/accounts/login/", {"username": "viola", "password": "wrong"})
    response = client.post("/accounts/login/", {"username": "viola", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_administrator_unlocks_a_locked_out_username(client, settings):
    from axes.models import AccessAttempt

    settings.AXES_FAILURE_LIMIT = 3
    make_viewer()
    for _ in range(3):
        client.post("/accounts/login/", {"username": "viola", "password": "wrong"})
    assert AccessAttempt.objects.filter(username="viola").exists()
    AccessAttempt.objects.filter(username="viola").delete()  # the admin's "delete" is the unlock
    assert log_in_again(client).status_code == 302


def log_in_again(client):
    return client.post("/accounts/login/", {"username": "viola", "password": PASSWORD})


def test_wrong_api_tokens_are_throttled(client, settings):
    from django.core.cache import cache

    cache.clear()
    settings.DURABLE_TOKEN_FAILURE_LIMIT = 10
    statuses = [
        client.get("/api/runs/", HTTP_AUTHORIZATION=f"Token wrong{i:036d}").status_code for i in range(12)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    cache.clear()


@pytest.mark.parametrize(
    "password",
    ["viola-viola", "58293017", "short", "password123"],
    ids=["like-the-username", "all-digits", "too-short", "common"],
)
def test_weak_passwords_are_refused(password):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    user = make_viewer()
    with pytest.raises(ValidationError):
        validate_password(password, user)


def test_password_reset_pages_exist_only_when_mail_is_configured(client, settings):
    import importlib

    from django.urls import clear_url_caches

    import config.urls

    assert client.get("/accounts/password_reset/").status_code == 404
    settings.EMAIL_HOST = "mail.example.com"
    try:
        importlib.reload(config.urls)
        clear_url_caches()
        assert client.get("/accounts/password_reset/").status_code == 200
    finally:
        settings.EMAIL_HOST = ""
        importlib.reload(config.urls)
        clear_url_caches()
