"""What the API answers when queueing fails, for odd cursors, and for unsafe token settings."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.support.web import ARTICLE
from vip_worker import config
from vip_worker.web.auth import check_jwt

PEM = "-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n"


def test_a_send_that_fails_answers_503_and_its_replay_does_not_claim_queued(web_api,
                                                                          sqs_endpoint):
    missing = f"{sqs_endpoint}/123456789012/no-such-queue"
    api = web_api(queues=False, environ={"ARTICLES_QUEUE_URL": missing,
                                         "IMAGES_QUEUE_URL": missing})
    headers = {**api.as_user("u1"), "Idempotency-Key": "order-7"}
    first = api.post("/api/content/generate", ARTICLE, headers)
    assert first.status_code == 503 and first.headers["Retry-After"] == "5"
    assert "no-such-queue" in first.json()["detail"]
    again = api.post("/api/content/generate", ARTICLE, headers)
    assert again.status_code == 503, again.text  # never a 202 for a job that cannot run
    assert "new key" in again.json()["detail"]


def cursor(stamp: str) -> str:
    raw = json.dumps([stamp, "job"]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
                                   "2026-01-01T00:00:00"])
def test_a_cursor_at_the_edge_of_time_or_without_a_zone_is_a_422(web_api, stamp):
    api = web_api()
    response = api.get("/api/content/jobs", api.as_user("u1"), cursor=cursor(stamp))
    assert response.status_code == 422, response.text


def settings(**values):
    return config.load(environ={}, require_queues=False).with_values(**values)


@pytest.mark.parametrize(("values", "named"), [
    ({"web_jwt_key": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"}, "web_jwt_algorithms"),
    ({"web_jwt_key": PEM, "web_jwt_algorithms": ["RS256", "HS256"]}, "HS256"),
    ({"web_jwt_jwks_url": "http://127.0.0.1:9/jwks", "web_jwt_algorithms": ["HS256"]}, "HMAC"),
    ({"web_jwt_jwks_url": "http://127.0.0.1:9/jwks"}, "web_jwt_audience"),
], ids=["public-key-as-secret", "pem-with-hmac", "jwks-with-hmac", "jwks-without-audience"])
def test_unsafe_session_token_settings_are_refused_naming_them(values, named):
    assert named in check_jwt(settings(**values))


def test_safe_session_token_settings_pass():
    assert check_jwt(settings()) is None
    assert check_jwt(settings(web_jwt_key="s" * 32, web_jwt_algorithms=["HS256"])) is None
    assert check_jwt(settings(web_jwt_key=PEM)) is None
    assert check_jwt(settings(web_jwt_jwks_url="http://127.0.0.1:9/jwks",
                              web_jwt_audience="vip-app")) is None


def test_a_token_for_another_audience_is_refused_when_none_is_configured(web_api):
    secret = "s" * 32
    api = web_api(web_jwt_key=secret, web_jwt_algorithms=["HS256"])
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60, "aud": "some-other-app"},
                       secret, algorithm="HS256")
    assert api.get("/api/content/jobs", {"Authorization": f"Bearer {token}"}).status_code == 401
