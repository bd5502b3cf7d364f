"""Creating and reading jobs: the app's JSON, validation, idempotency, the rate limit."""

from __future__ import annotations

import json

import pytest

from tests.support.web import ARTICLE, bad_fields
from vip_worker.message import parse_envelope


def received(sqs, url: str) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_post_article_answers_202_and_sends_the_apps_envelope(web_api, sqs):
    api = web_api()
    response = api.post("/api/content/generate", ARTICLE, api.as_user("u1"))
    assert response.status_code == 202
    body = response.json()
    assert body["success"] is True and body["message"] == "Job queued successfully"
    job_id = body["jobId"]
    [message] = received(sqs, api.settings.queue("articles").url)
    assert {k: message[k] for k in ("jobId", "userId", "type", "payload")} == {
        "jobId": job_id, "userId": "u1", "type": "articles", "payload": ARTICLE}
    parse_envelope(json.dumps(message))  # the daemon's own parser accepts it
    job = api.get(f"/api/content/jobs/{job_id}", api.as_user("u1")).json()
    assert job["jobId"] == job_id and job["status"] == "queued" and job["progress"] == 0
    assert job["type"] == "articles" and job["createdAt"] and job["result"] is None
    assert job["links"]["events"] == f"/api/content/jobs/{job_id}/events"


def test_post_media_queues_an_image_job(web_api, sqs):
    api = web_api()
    body = {"prompt": "A stadium at dusk", "size": "1024x1024"}
    response = api.post("/api/media/generate", body, api.as_user("u1"))
    assert response.status_code == 202
    [message] = received(sqs, api.settings.queue("images").url)
    assert message["type"] == "images" and message["payload"] == body


def test_a_completed_job_says_where_its_result_lives(web_api):
    api = web_api()
    job_id = api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    api.store.claim(job_id, user_id="u1", type="articles", params=ARTICLE, message_id="m1",
                    lease_s=60, now=now)
    api.store.save_result(job_id, "generated_content", {"title": "T"}, now)
    job = api.get(f"/api/content/jobs/{job_id}", api.as_user("u1")).json()
    assert job["status"] == "completed" and job["progress"] == 100 and job["completedAt"]
    assert job["result"] == {"collection": "generated_content", "jobId": job_id}


@pytest.mark.parametrize("change, fields", [
    ({"mode": "no-such-mode"}, {"mode"}),
    ({"wordCount": 5}, {"wordCount"}),
    ({"wordCount": 10**6, "topic": "x" * 501}, {"wordCount", "topic"}),
    ({"tone": 3}, {"tone"}),
    ({"keywords": ["k"] * 51}, {"keywords"}),
    ({"seoOptimization": "maybe"}, {"seoOptimization"}),
    ({"surprise": 1}, {"surprise"}),
], ids=["mode", "wordCount-low", "two-fields", "tone-type", "keywords", "bool", "unknown"])
def test_each_bad_field_is_named_in_a_422(web_api, change, fields):
    api = web_api()
    response = api.post("/api/content/generate", {**ARTICLE, **change}, api.as_user("u1"))
    assert bad_fields(response) == fields


def test_malformed_json_and_a_bad_image_body_answer_422(web_api):
    api = web_api()
    with api.client() as client:
        response = client.post("/api/content/generate", content=b"{not json",
                               headers={**api.as_user("u1"), "Content-Type": "application/json"})
    assert response.status_code == 422
    assert bad_fields(api.post("/api/media/generate", {"size": "huge"},
                               api.as_user("u1"))) == {"prompt", "size"}


def test_a_body_over_the_limit_answers_413(web_api):
    api = web_api(web_max_body_bytes=2048)
    big = {**ARTICLE, "content": "x" * 4096}
    assert api.post("/api/content/generate", big, api.as_user("u1")).status_code == 413
    with api.client() as client:  # streamed, without Content-Length
        chunks = iter([json.dumps(big).encode()[i:i + 512] for i in range(0, 5000, 512)])
        response = client.post("/api/content/generate", content=chunks,
                               headers={**api.as_user("u1"), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_an_idempotency_key_returns_the_first_job(web_api, sqs):
    api = web_api()
    headers = {**api.as_user("u1"), "Idempotency-Key": "order-42"}
    first = api.post("/api/content/generate", ARTICLE, headers)
    again = api.post("/api/content/generate", ARTICLE, headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["jobId"] == again.json()["jobId"]
    assert len(received(sqs, api.settings.queue("articles").url)) == 1
    # The same key from another user is another job; another body under it is a conflict.
    other = api.post("/api/content/generate", ARTICLE, {**api.as_user("u2"),
                                                        "Idempotency-Key": "order-42"})
    assert other.json()["jobId"] != first.json()["jobId"]
    changed = api.post("/api/content/generate", {**ARTICLE, "topic": "Other"}, headers)
    assert changed.status_code == 409


def test_an_idempotency_key_survives_a_restart(web_api):
    api = web_api()
    headers = {**api.as_user("u1"), "Idempotency-Key": "k-restart"}
    job_id = api.post("/api/content/generate", ARTICLE, headers).json()["jobId"]
    api.server.stop()
    again = web_api()  # a new process's state: only the store is shared
    again_id = again.post("/api/content/generate", ARTICLE, {
        **again.as_user("u1"), "Idempotency-Key": "k-restart"}).json()["jobId"]
    assert again_id == job_id


def test_the_rate_limit_answers_429_with_retry_after_per_user(web_api):
    api = web_api(web_rate_burst=2, web_rate_per_minute=1.0)
    codes = [api.post("/api/content/generate", ARTICLE, api.as_user("u1")).status_code
             for _ in range(3)]
    assert codes == [202, 202, 429]
    refused = api.post("/api/content/generate", ARTICLE, api.as_user("u1"))
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert api.post("/api/content/generate", ARTICLE, api.as_user("u2")).status_code == 202


def test_list_pages_the_callers_jobs_with_a_cursor(web_api):
    api = web_api(web_rate_burst=20)
    made = [api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
            for _ in range(5)]
    api.post("/api/content/generate", ARTICLE, api.as_user("u2"))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/content/jobs", api.as_user("u1"), **params).json()
        seen += [job["jobId"] for job in page["jobs"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 5
    assert api.get("/api/content/jobs", api.as_user("u1"), status="failed").json()["jobs"] == []
    assert bad_fields(api.get("/api/content/jobs", api.as_user("u1"), cursor="!!")) == {"cursor"}
    assert bad_fields(api.get("/api/content/jobs", api.as_user("u1"), status="x")) == {"status"}
    assert bad_fields(api.get("/api/content/jobs", api.as_user("u1"), limit=0)) == {"limit"}


def test_health_and_openapi_need_no_credentials(web_api):
    api = web_api()
    assert api.get("/api/health", {}).json() == {"status": "ok"}
    schema = api.get("/openapi.json", {}).json()
    modes = schema["components"]["schemas"]["ArticleRequest"]["properties"]["mode"]
    assert modes["enum"] == api.settings.article_modes
    assert api.get("/docs", {}).status_code == 200
