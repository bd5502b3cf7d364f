"""The dashboard's security through real HTTP: sign-in, the session cookie's flags, CSRF
and confirmation on every action, the read-only viewer, open access on loopback."""

from __future__ import annotations

import pytest

from tests.support.dashboard import csrf_of, make_jobs, signed_in
from vip_worker.web.dashboard.session import COOKIE
from vip_worker.web.keys import create_key, revoke_key

pytestmark = pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)


def cookie_header(answer) -> str:
    return next(v for k, v in answer.headers.multi_items()
                if k == "set-cookie" and v.startswith(f"{COOKIE}="))


def test_every_page_needs_a_session(web_api):
    api = web_api()
    with api.client() as client:
        for path in ("/dashboard/jobs", "/dashboard/dlq", "/dashboard/overview",
                     "/dashboard/fleet", "/dashboard/jobs/job-1"):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/dashboard/login?next=/dashboard/")
        refused = client.post("/dashboard/jobs/job-1/cancel", data={"confirm": "yes"})
        assert refused.status_code == 401
        assert "Open access" not in client.get("/dashboard/login").text


def test_sign_in_sets_an_httponly_samesite_strict_cookie(web_api):
    api = web_api()
    with api.client() as client:
        answer = client.post("/dashboard/login", data={"key": api.keys["admin"]})
        flags = [part.strip().lower() for part in cookie_header(answer).split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/dashboard" in flags
        assert "secure" not in flags  # plain HTTP from a client that is no trusted proxy
        assert client.get("/dashboard/jobs").status_code == 200


def test_the_cookie_is_secure_behind_a_trusted_https_proxy(web_api):
    api = web_api(web_forwarded_allow_ips=["127.0.0.1"])
    with api.client() as client:
        answer = client.post("/dashboard/login", data={"key": api.keys["admin"]},
                             headers={"X-Forwarded-Proto": "https"})
        assert "secure" in [p.strip().lower() for p in cookie_header(answer).split(";")]


def test_x_forwarded_proto_from_an_untrusted_client_is_ignored(web_api):
    api = web_api()  # web_forwarded_allow_ips empty: nobody is trusted
    with api.client() as client:
        answer = client.post("/dashboard/login", data={"key": api.keys["admin"]},
                             headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in [p.strip().lower() for p in cookie_header(answer).split(";")]


def test_bad_keys_cannot_sign_in(web_api):
    api = web_api()
    with api.client() as client:
        assert client.post("/dashboard/login", data={"key": "vwk_nope_x"}).status_code == 401
        backend = client.post("/dashboard/login", data={"key": api.keys["backend"]})
        assert backend.status_code == 403 and COOKIE not in backend.headers.get("set-cookie", "")
        assert client.get("/dashboard/jobs").status_code == 303


def test_a_forged_or_revoked_session_is_refused(web_api):
    api = web_api()
    with signed_in(api, api.keys["admin"]) as client:
        value = client.cookies[COOKIE]
        payload, _, signature = value.partition(".")
        client.cookies.set(COOKIE, payload + "." + signature[::-1], path="/dashboard")
        assert client.get("/dashboard/jobs").status_code == 303
        client.cookies.set(COOKIE, value, path="/dashboard")
        assert client.get("/dashboard/jobs").status_code == 200
        key_id = api.keys["admin"][len("vwk_"):].split("_")[0]
        assert revoke_key(api.settings.web_keys_file, key_id)
        assert client.get("/dashboard/jobs").status_code == 303


def test_an_action_without_csrf_or_confirmation_is_refused(web_api, caplog):
    api = web_api()
    [job_id] = make_jobs(api.store, 1)
    with signed_in(api, api.keys["admin"]) as client:
        path = f"/dashboard/jobs/{job_id}/cancel"
        csrf = csrf_of(client, path)
        for form in ({"confirm": "yes"}, {"csrf": "forged", "confirm": "yes"}, {"csrf": csrf},
                     {"csrf": csrf, "confirm": "no"}):
            answer = client.post(path, data=form)
            assert answer.status_code == 403, form
            assert api.store.get_job(job_id)["status"] == "queued"
        json_body = client.post(path, json={"csrf": csrf, "confirm": "yes"})
        assert json_body.status_code == 415
        with caplog.at_level("INFO", logger="vip_worker.web.dashboard"):
            done = client.post(path, data={"csrf": csrf, "confirm": "yes"})
        assert done.status_code == 303
        assert api.store.get_job(job_id)["status"] == "cancelled"
        [record] = [r for r in caplog.records if r.getMessage() == "dashboard.action"]
        assert (record.action, record.job_id, record.role) == ("cancel", job_id, "admin")
        assert "test-admin" in record.who and api.keys["admin"] not in record.who


def test_a_viewer_sees_every_page_and_cannot_act(web_api):
    api = web_api()
    viewer = create_key(api.settings.web_keys_file, "support", "viewer")[1]
    [job_id] = make_jobs(api.store, 1)
    with signed_in(api, viewer) as client:
        page = client.get(f"/dashboard/jobs/{job_id}")
        assert page.status_code == 200 and "Read-only session" in page.text
        assert "/cancel" not in page.text
        assert client.get(f"/dashboard/jobs/{job_id}/cancel").status_code == 403
        csrf = csrf_of(client, "/dashboard/jobs")  # the sign-out form's
        answer = client.post(f"/dashboard/jobs/{job_id}/cancel",
                             data={"csrf": csrf, "confirm": "yes"})
        assert answer.status_code == 403
        assert api.store.get_job(job_id)["status"] == "queued"
    refused = api.get("/api/content/jobs", {"Authorization": f"Bearer {viewer}",
                                            "X-User-Id": "user-1"})
    assert refused.status_code == 403  # the job API refuses a viewer key


def test_open_access_on_loopback_says_so_and_can_act(web_api):
    api = web_api(keys=False)
    [job_id] = make_jobs(api.store, 1)
    with api.client() as client:
        page = client.get("/dashboard/jobs")
        assert page.status_code == 200 and "Open access" in page.text
        path = f"/dashboard/jobs/{job_id}/cancel"
        assert client.post(path, data={"confirm": "yes"}).status_code == 403
        csrf = csrf_of(client, path)
        assert client.post(path, data={"csrf": csrf, "confirm": "yes"}).status_code == 303
        assert api.store.get_job(job_id)["status"] == "cancelled"


def test_sign_out_ends_the_session(web_api):
    api = web_api()
    with signed_in(api, api.keys["admin"]) as client:
        csrf = csrf_of(client, "/dashboard/jobs")
        assert client.post("/dashboard/logout", data={"csrf": "x"}).status_code == 403
        assert client.post("/dashboard/logout", data={"csrf": csrf}).status_code == 303
        assert client.get("/dashboard/jobs").status_code == 303


def test_pages_send_security_headers(web_api):
    api = web_api()
    with signed_in(api, api.keys["admin"]) as client:
        headers = client.get("/dashboard/jobs").headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


def test_sign_in_never_redirects_off_the_dashboard(web_api):
    api = web_api()
    with api.client() as client:
        for target in ("//evil.example/x", "https://evil.example/", "/api/content/jobs",
                       "/dashboard\\..\\x", ""):
            answer = client.post("/dashboard/login", data={"key": api.keys["admin"],
                                                           "next": target})
            assert answer.headers["location"] == "/dashboard/", target
        kept = client.post("/dashboard/login", data={"key": api.keys["admin"],
                                                     "next": "/dashboard/dlq?queue=a"})
        assert kept.headers["location"] == "/dashboard/dlq?queue=a"

