"""Who may call, and who sees what: keys, session tokens (a key and a JWKS), isolation."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.web import ARTICLE
from vip_worker.web.keys import create_key, revoke_key

SECRET = "s" * 32


def token(user="u1", key=SECRET, algorithm="HS256", **claims) -> str:
    body = {"sub": user, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": "k1"})


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


@pytest.mark.parametrize("headers", [
    {}, bearer("vwk_00000000_nope"), {"X-API-Key": "vwk_nope"}, bearer("not-a-jwt"),
], ids=["none", "unknown-key", "malformed-key", "garbage-token"])
def test_requests_without_valid_credentials_answer_401(web_api, headers):
    api = web_api()
    for method, path in [("post", "/api/content/generate"), ("get", "/api/content/jobs"),
                         ("get", "/api/content/jobs/abc"), ("get", "/api/content/jobs/abc/events")]:
        with api.client() as client:
            response = client.request(method, path, headers=headers,
                                      json=ARTICLE if method == "post" else None)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_backend_key_must_name_the_user_it_acts_for(web_api):
    api = web_api()
    response = api.post("/api/content/generate", ARTICLE, bearer(api.keys["backend"]))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "X-User-Id"]


def test_another_users_job_answers_404_and_is_not_listed(web_api):
    api = web_api()
    job_id = api.post("/api/content/generate", ARTICLE, api.as_user("alice")).json()["jobId"]
    assert api.get(f"/api/content/jobs/{job_id}", api.as_user("alice")).status_code == 200
    stranger = api.get(f"/api/content/jobs/{job_id}", api.as_user("mallory"))
    assert stranger.status_code == 404
    assert stranger.json() == api.get("/api/content/jobs/nope", api.as_user("alice")).json()
    assert api.get(f"/api/content/jobs/{job_id}/events",
                   api.as_user("mallory")).status_code == 404
    assert api.get("/api/content/jobs", api.as_user("mallory")).json()["jobs"] == []
    # An admin key sees every user's job.
    admin = bearer(api.keys["admin"])
    assert api.get(f"/api/content/jobs/{job_id}", admin).json()["jobId"] == job_id


def test_a_revoked_key_is_refused_without_a_restart(web_api):
    api = web_api()
    path = api.settings.web_keys_file
    key, text = create_key(path, "short-lived")
    headers = {**bearer(text), "X-User-Id": "u1"}
    assert api.get("/api/content/jobs", headers).status_code == 200
    revoke_key(path, key.id)
    assert api.get("/api/content/jobs", headers).status_code == 401


def test_a_session_token_acts_for_its_user_and_only_its_user(web_api):
    api = web_api(web_jwt_key=SECRET, web_jwt_algorithms=["HS256"])
    job_id = api.post("/api/content/generate", ARTICLE, bearer(token("u1"))).json()["jobId"]
    assert api.store.get_job(job_id)["userId"] == "u1"
    assert api.get(f"/api/content/jobs/{job_id}", bearer(token("u1"))).status_code == 200
    assert api.get(f"/api/content/jobs/{job_id}", bearer(token("u2"))).status_code == 404
    # A browser cannot pick the user it acts for.
    named = api.get(f"/api/content/jobs/{job_id}", {**bearer(token("u2")), "X-User-Id": "u1"})
    assert named.status_code == 403


@pytest.mark.parametrize("bad", [
    token(key="another-secret-of-32-bytes-at-least"), token(exp=int(time.time()) - 10),
    jwt.encode({"sub": "u1"}, SECRET, algorithm="HS256"),  # no exp
    token(user=""),
], ids=["wrong-key", "expired", "no-exp", "no-user"])
def test_a_bad_session_token_answers_401(web_api, bad):
    api = web_api(web_jwt_key=SECRET, web_jwt_algorithms=["HS256"])
    assert api.get("/api/content/jobs", bearer(bad)).status_code == 401


@pytest.fixture
def jwks_server():
    """An RSA key and its JWKS served on 127.0.0.1."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield private, f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


def test_a_session_token_verified_against_a_jwks_url(web_api, jwks_server):
    private, url = jwks_server
    api = web_api(web_jwt_jwks_url=url, web_jwt_audience="vip-app", web_jwt_user_claim="uid")
    good = token(key=private, algorithm="RS256", aud="vip-app", uid="u7")
    assert api.post("/api/content/generate", ARTICLE, bearer(good)).status_code == 202
    assert len(api.get("/api/content/jobs", bearer(good)).json()["jobs"]) == 1
    wrong_audience = token(key=private, algorithm="RS256", aud="other", uid="u7")
    assert api.get("/api/content/jobs", bearer(wrong_audience)).status_code == 401


def test_open_access_on_loopback_when_nothing_is_configured(web_api):
    api = web_api(keys=False)
    response = api.post("/api/content/generate", ARTICLE, {"X-User-Id": "dev"})
    assert response.status_code == 202
    assert api.store.get_job(response.json()["jobId"])["userId"] == "dev"
