"""The dashboard's jobs pages through real HTTP, on both stores: search, cursor pages, a
job's timeline, 404 and 422 pages (never a 500), cancel, and retry re-sending the message;
the newest jobs live through /dashboard/events, a search or an older page not."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tests.support.dashboard import csrf_of, make_jobs, signed_in
from tests.support.sqs import queue_counts
from tests.support.web import sse_events

JOB_LINK = re.compile(r'href="/dashboard/jobs/(job-[^"/]+)"')


def listed(html: str) -> list[str]:
    return JOB_LINK.findall(html)


def test_search_filters_and_pages_with_a_cursor(web_api):
    api = web_api()
    alice = make_jobs(api.store, 60, user="alice")
    bob = make_jobs(api.store, 3, user="bob", type_="images")
    with signed_in(api, api.keys["admin"]) as client:
        first = client.get("/dashboard/jobs", params={"user_id": "alice"})
        assert first.status_code == 200
        page1 = listed(first.text)
        assert page1 == alice[::-1][:50]  # newest first
        more = re.search(r'class="next" href="([^"]+)"', first.text)
        assert more, "a link to the next page"
        second = client.get(more.group(1).replace("&amp;", "&"))
        assert listed(second.text) == alice[::-1][50:]
        assert 'class="next"' not in second.text
        images = client.get("/dashboard/jobs", params={"type": "images", "status": "queued"})
        assert listed(images.text) == bob[::-1]
        window = client.get("/dashboard/jobs", params={
            "user_id": "alice", "since": "2026-01-01T00:00:10", "until": "2026-01-01T00:00:13"})
        assert listed(window.text) == alice[10:13][::-1]  # since inclusive, until exclusive
        none = client.get("/dashboard/jobs", params={"status": "failed"})
        assert listed(none.text) == [] and "No jobs match" in none.text


def test_a_job_id_opens_its_page_with_its_timeline(web_api):
    api = web_api()
    [job_id] = make_jobs(api.store, 1)
    with signed_in(api, api.keys["admin"]) as client:
        found = client.get("/dashboard/jobs", params={"job_id": job_id})
        assert found.status_code == 303
        assert found.headers["location"] == f"/dashboard/jobs/{job_id}"
        page = client.get(found.headers["location"])
        assert page.status_code == 200
        assert 'data-event="created"' in page.text and "topic 0" in page.text


def test_a_missing_job_is_404_and_bad_input_is_422_never_500(web_api):
    api = web_api()
    with signed_in(api, api.keys["admin"]) as client:
        assert client.get("/dashboard/jobs/nope").status_code == 404
        assert client.get("/dashboard/jobs/bad%20id%21").status_code == 404
        assert client.post("/dashboard/jobs/nope/cancel", data={
            "csrf": csrf_of(client, "/dashboard/jobs"), "confirm": "yes"}).status_code == 404
        for params in ({"status": "done"}, {"since": "yesterday"}, {"until": "2026-13-01"},
                       {"cursor": "!!"}, {"cursor": "bm90IGpzb24"}, {"job_id": "a b"},
                       {"user_id": "x" * 300}, {"type": "<script>"}):
            answer = client.get("/dashboard/jobs", params=params)
            assert answer.status_code == 422, (params, answer.status_code)
        # Input that comes back escaped: test_dashboard_dlq.py (these 422s never echo it).


def test_cancel_a_queued_job_from_its_page(web_api):
    api = web_api()
    [job_id] = make_jobs(api.store, 1)
    with signed_in(api, api.keys["admin"]) as client:
        assert f"/dashboard/jobs/{job_id}/cancel" in client.get(f"/dashboard/jobs/{job_id}").text
        path = f"/dashboard/jobs/{job_id}/cancel"
        done = client.post(path, data={"csrf": csrf_of(client, path), "confirm": "yes"})
        assert done.status_code == 303
        page = client.get(done.headers["location"])
        assert "The job is cancelled." in page.text and 'data-event="cancelled"' in page.text
        again = client.post(path, data={"csrf": csrf_of(client, "/dashboard/jobs"),
                                        "confirm": "yes"})
        assert again.status_code == 409


def test_retry_a_failed_job_queues_it_and_sends_its_message(web_api, sqs):
    api = web_api()
    [job_id] = make_jobs(api.store, 1)
    api.store.fail(job_id, "RuntimeError: boom", datetime.now(UTC))
    url = api.settings.queue("articles").url
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get(f"/dashboard/jobs/{job_id}")
        assert "RuntimeError: boom" in page.text and f"{job_id}/retry" in page.text
        path = f"/dashboard/jobs/{job_id}/retry"
        done = client.post(path, data={"csrf": csrf_of(client, path), "confirm": "yes"})
        assert done.status_code == 303, done.text
        assert api.store.get_job(job_id)["status"] == "queued"
        assert queue_counts(sqs, url) == (1, 0)
        again = client.post(path, data={"csrf": csrf_of(client, "/dashboard/jobs"),
                                        "confirm": "yes"})
        assert again.status_code == 409  # queued now: nothing to retry
        assert queue_counts(sqs, url) == (1, 0)


@pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)
def test_the_search_form_keeps_what_was_asked(web_api):
    api = web_api()
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get("/dashboard/jobs", params={"user_id": "alice", "status": "failed"})
        assert 'value="alice"' in page.text and "<option selected>failed</option>" in page.text


def status_in(fragment: str, job_id: str) -> str | None:
    """The status the list fragment shows for ``job_id`` (None: not listed)."""
    found = re.search(rf'href="/dashboard/jobs/{job_id}">.*?class="status status-(\w+)"',
                      fragment, re.S)
    return found.group(1) if found else None


def test_only_the_newest_jobs_unfiltered_are_live(web_api):
    api = web_api()
    make_jobs(api.store, 55, user="alice")
    with signed_in(api, api.keys["admin"]) as client:
        newest = client.get("/dashboard/jobs")
        assert 'id="jobs-live" data-events="/dashboard/events"' in newest.text
        assert "/dashboard/static/live.js" in newest.text
        assert len(listed(newest.text)) == 50 and 'class="next"' in newest.text
        more = re.search(r'class="next" href="([^"]+)"', newest.text).group(1)
        for page in (client.get("/dashboard/jobs", params={"user_id": "alice"}),
                     client.get(more.replace("&amp;", "&"))):
            assert page.status_code == 200
            assert listed(page.text), "the page lists jobs"
            assert 'id="jobs-live"' not in page.text and "live.js" not in page.text
            assert "reload the page to refresh it" in page.text


def test_the_event_stream_carries_the_newest_jobs_as_their_status_changes(web_api):
    api = web_api(dashboard_refresh_s=1.0)
    old, new = make_jobs(api.store, 2, start=datetime.now(UTC))
    with signed_in(api, api.keys["admin"]) as client, \
            client.stream("GET", "/dashboard/events") as response:
        assert response.status_code == 200
        frames = sse_events(response)
        event, data = next(frames)
        assert event == "update"
        first = data["fragments"]["jobs-live"]
        assert listed(first) == [new, old]  # newest first, as the page
        assert status_in(first, new) == "queued"
        api.store.save_result(new, api.settings.content_collection, {"title": "t"},
                              datetime.now(UTC))
        assert api.store.get_job(new)["status"] == "completed"
        # the next updates (one a second) show it, without any request of this client's
        for count, (_event, data) in enumerate(frames):
            if status_in(data["fragments"]["jobs-live"], new) == "completed":
                break
            assert count < 30, "the completed job never reached the stream"
        assert status_in(data["fragments"]["jobs-live"], old) == "queued"
