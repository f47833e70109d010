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
