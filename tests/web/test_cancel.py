"""``POST /api/content/jobs/{jobId}/cancel``: a queued job ends cancelled at once (200), a
running one is marked (202), another user's job is 404, a finished one 409."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.web import ARTICLE


def create(api, user="u1") -> str:
    return api.post("/api/content/generate", ARTICLE, api.as_user(user)).json()["jobId"]


def cancel(api, job_id, user="u1"):
    return api.post(f"/api/content/jobs/{job_id}/cancel", None, api.as_user(user))


def claim(api, job_id):
    api.store.claim(job_id, user_id="u1", type="articles", params=ARTICLE, message_id="m1",
                    lease_s=60, now=datetime.now(UTC), delivery="d1")


def test_a_queued_job_is_cancelled_at_once(web_api):
    api = web_api()
    job_id = create(api)
    response = cancel(api, job_id)
    assert response.status_code == 200
    body = response.json()
    assert body["jobId"] == job_id and body["status"] == "cancelled"
    assert api.get(f"/api/content/jobs/{job_id}", api.as_user("u1")).json()["status"] == (
        "cancelled")
    listed = api.get("/api/content/jobs?status=cancelled", api.as_user("u1")).json()["jobs"]
    assert [j["jobId"] for j in listed] == [job_id]


def test_a_running_job_is_marked_for_its_poller(web_api):
    api = web_api()
    job_id = create(api)
    claim(api, job_id)
    response = cancel(api, job_id)
    assert response.status_code == 202
    assert response.json()["status"] == "processing"
    assert api.store.get_job(job_id)["cancelRequestedAt"] is not None
    assert cancel(api, job_id).status_code == 202  # asked again: the same answer


def test_another_users_job_is_not_found_and_left_alone(web_api):
    api = web_api()
    job_id = create(api, "u1")
    assert cancel(api, job_id, user="u2").status_code == 404
    assert cancel(api, "no-such-job").status_code == 404
    assert api.store.get_job(job_id)["status"] == "queued"


def test_a_completed_job_is_a_conflict(web_api):
    api = web_api()
    job_id = create(api)
    claim(api, job_id)
    api.store.complete(job_id, datetime.now(UTC), delivery="d1")
    response = cancel(api, job_id)
    assert response.status_code == 409
    assert "completed" in response.text
    assert api.store.get_job(job_id)["status"] == "completed"
