"""The API keeps its own policy in a project whose REST_FRAMEWORK says nothing of it:
token authentication first, its error handling, its strict parser and its throttles."""

import pytest
from django.core.cache import cache
from django.test import override_settings

from tests.test_api import finished, operator, operator_user, post, user_with  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

NO_PROJECT_POLICY = override_settings(REST_FRAMEWORK={})


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


@NO_PROJECT_POLICY
def test_it_asks_for_a_token_without_the_projects_settings(client):
    response = client.get("/api/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@NO_PROJECT_POLICY
def test_a_wrong_state_action_is_409_not_500(operator, doorbells):  # noqa: F811
    run = finished(doorbells)
    response = post(operator, f"/api/runs/{run.pk}/resume/", {"reason": "why not"})
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"Cannot resume run {run.pk}")


@NO_PROJECT_POLICY
def test_its_strict_parser_refuses_nan(operator):  # noqa: F811
    response = operator.post(
        "/api/runs/", '{"workflow": "arithmetic", "input": NaN}', content_type="application/json"
    )
    assert response.status_code == 400


@NO_PROJECT_POLICY
def test_a_user_is_throttled_at_the_durable_rate(operator, settings):  # noqa: F811
    settings.DURABLE_API_USER_RATE = "2/min"
    codes = [operator.get("/api/runs/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
