"""The job's Server-Sent Events: each progress step written to the store, then the end."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from tests.support.wait import wait_until
from tests.support.web import ARTICLE, sse_events


def test_the_stream_delivers_progress_steps_and_the_end(web_api):
    api = web_api(web_events_poll_s=0.05)
    job_id = api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
    store, now = api.store, datetime.now(UTC)
    store.claim(job_id, user_id="u1", type="articles", params=ARTICLE, message_id="m1",
                lease_s=60, now=now)
    seen: list[tuple[str, dict]] = []
    done = threading.Event()

    def listen() -> None:
        with api.client() as client, client.stream(
                "GET", f"/api/content/jobs/{job_id}/events", headers=api.as_user("u1")) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(r):
                seen.append(event)
        done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: seen, 10, message="the stream's first event")
    for percent in (30, 60):
        # Each step only once the stream showed the previous one: none is overwritten.
        store.progress(job_id, percent, f"step {percent}", datetime.now(UTC))
        wait_until(lambda p=percent: any(d["progress"] == p for _, d in seen), 10,
                   message=f"the {percent}% step on the stream")
    store.save_result(job_id, "generated_content", {"title": "T"}, datetime.now(UTC))
    wait_until(done.is_set, 10, message="the stream to end")
    listener.join(5)
    assert [d["progress"] for e, d in seen if e == "job"] == [0, 30, 60, 100]
    assert seen[-1][0] == "end" and seen[-1][1]["status"] == "completed"
    assert seen[1][1]["message"] == "step 30"
