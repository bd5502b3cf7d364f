"""Defects a security review reproduced against a real server, each through real HTTP:
open access behind a proxy or through a forwarded request, DNS rebinding (a foreign Host
or Origin), non-ASCII cookies and CSRF tokens, input that comes back into a page."""

from __future__ import annotations

import pytest

from tests.support.dashboard import CSRF_RE, csrf_of, make_jobs, signed_in
from vip_worker.web.dashboard.session import COOKIE
from vip_worker.web.keys import revoke_key

pytestmark = pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)

ARTICLE = {"type": "articles", "payload": {"topic": "x"}}
FORWARDED = ({"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https",
              "Host": "dash.example.com"},
             {"X-Forwarded-For": "203.0.113.5"},
             {"Forwarded": "for=203.0.113.5;proto=https"},
             {"X-Forwarded-Host": "dash.example.com"})


def key_id(key: str) -> str:
    return key[len("vwk_"):].split("_")[0]


def test_a_trusted_proxy_without_keys_opens_nothing(web_api, caplog):
    api = web_api(keys=False, web_forwarded_allow_ips=["127.0.0.1"])
    with api.client() as client, caplog.at_level("WARNING", logger="vip_worker.web"):
        for headers in FORWARDED + ({},):
            page = client.get("/dashboard/jobs", headers=headers)
            assert page.status_code == 303, headers  # the sign-in page
            assert page.headers["location"].startswith("/dashboard/login")
            assert "Open access" not in client.get("/dashboard/login", headers=headers).text
            api_answer = client.get("/api/content/jobs", headers=headers)
            assert api_answer.status_code == 401, headers
    refusals = [r for r in caplog.records if r.getMessage() == "web.open_access_refused"]
    assert len(refusals) == 1  # once, not per request


def test_forwarded_headers_refuse_open_access_without_a_proxy(web_api):
    api = web_api(keys=False)
    with api.client() as client:
        for headers in FORWARDED:
            assert client.get("/dashboard/jobs", headers=headers).status_code == 303, headers
            answer = client.post("/api/content/generate", json=ARTICLE, headers=headers)
            assert answer.status_code == 401, headers
        assert client.get("/dashboard/jobs").status_code == 200  # plain loopback: open


def test_revoking_the_last_key_behind_a_proxy_opens_nothing(web_api):
    api = web_api(web_forwarded_allow_ips=["127.0.0.1"])
    for key in api.keys.values():
        assert revoke_key(api.settings.web_keys_file, key_id(key))
    with api.client() as client:
        assert client.get("/dashboard/dlq").status_code == 303
        assert client.get("/api/content/jobs", headers={"X-User-Id": "u"}).status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_open_access_takes_loopback_host_names(web_api, host):
    api = web_api(keys=False)
    with api.client() as client:
        page = client.get("/dashboard/jobs", headers={"Host": f"{host}:8080"})
        assert page.status_code == 200 and "Open access" in page.text


def test_a_rebound_host_gets_no_open_dashboard_nor_token(web_api):
    api = web_api(keys=False)
    [job_id] = make_jobs(api.store, 1)
    port = api.url.rsplit(":", 1)[1]
    rebound = {"Host": f"attacker.example:{port}"}
    with api.client() as client:
        csrf = csrf_of(client, f"/dashboard/jobs/{job_id}/cancel")  # a loopback page's
        page = client.get(f"/dashboard/jobs/{job_id}/cancel", headers=rebound)
        assert page.status_code == 303 and not CSRF_RE.search(page.text)
        answer = client.post(f"/dashboard/jobs/{job_id}/cancel", headers=rebound,
                             data={"csrf": csrf, "confirm": "yes"})
        assert answer.status_code == 401
        assert client.get("/api/content/jobs", headers=rebound).status_code == 401
        assert api.store.get_job(job_id)["status"] == "queued"


def test_a_post_from_another_origin_is_refused(web_api):
    api = web_api(keys=False)
    [job_id] = make_jobs(api.store, 1)
    path = f"/dashboard/jobs/{job_id}/cancel"
    with api.client() as client:
        csrf = csrf_of(client, path)
        form = {"csrf": csrf, "confirm": "yes"}
        for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            assert client.post(path, data=form, headers=headers).status_code == 403, headers
            assert api.store.get_job(job_id)["status"] == "queued"
        assert client.post("/dashboard/logout", data={"csrf": csrf},
                           headers={"Origin": "http://attacker.example"}).status_code == 403
        same = {"Origin": api.url, "Sec-Fetch-Site": "same-origin"}
        assert client.post(path, data=form, headers=same).status_code == 303
        assert api.store.get_job(job_id)["status"] == "cancelled"


def test_sign_in_from_another_origin_is_refused(web_api):
    api = web_api()
    with api.client() as client:
        answer = client.post("/dashboard/login", data={"key": api.keys["admin"]},
                             headers={"Origin": "http://attacker.example"})
        assert answer.status_code == 403 and COOKIE not in answer.headers.get("set-cookie", "")


def test_a_proxy_that_rewrites_host_keeps_same_origin_posts(web_api):
    api = web_api(web_forwarded_allow_ips=["127.0.0.1"])
    [job_id] = make_jobs(api.store, 1)
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "dash.example.com"}
    with signed_in(api, api.keys["admin"]) as client:
        path = f"/dashboard/jobs/{job_id}/cancel"
        form = {"csrf": csrf_of(client, path), "confirm": "yes"}
        evil = client.post(path, data=form, headers={**proxy, "Origin": "https://evil.example"})
        assert evil.status_code == 403
        done = client.post(path, data=form,
                           headers={**proxy, "Origin": "https://dash.example.com"})
        assert done.status_code == 303


def test_the_open_access_token_is_random_per_process(web_api):
    first, second = web_api(keys=False), web_api(keys=False)
    [job_id] = make_jobs(first.store, 1)
    make_jobs(second.store, 1)
    path = f"/dashboard/jobs/{job_id}/cancel"
    with first.client() as one, second.client() as two:
        assert csrf_of(one, path) != csrf_of(two, path)


def test_non_ascii_cookies_and_tokens_are_refused_not_500(web_api):
    api = web_api()
    [job_id] = make_jobs(api.store, 1)
    with api.client() as client:
        cookie = f"{COOKIE}=abc.".encode() + b"\xc3\xa9"
        assert client.get("/dashboard/jobs", headers={"Cookie": cookie}).status_code == 303
    with signed_in(api, api.keys["admin"]) as client:
        for path in (f"/dashboard/jobs/{job_id}/cancel", "/dashboard/logout"):
            answer = client.post(path, content=b"csrf=%FF&confirm=yes",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert answer.status_code in (400, 403), path
            answer = client.post(path, data={"csrf": "\u00e9t\u00e9", "confirm": "yes"})
            assert answer.status_code == 403, path
        assert api.store.get_job(job_id)["status"] == "queued"
