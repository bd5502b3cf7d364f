"""Progress that moves, end to end: the real daemon with the bundled articles plugin, a
stub generation service that streams its answer, the embedded SQLite store. While the
article is written, ``vip-worker jobs show`` and the job API's event stream
(``GET /api/content/jobs/{id}/events``) both see its progress rise step by step."""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest

from tests.support.ops_cli import run as run_cli
from tests.support.wait import wait_until
from tests.support.web import sse_events
from vip_worker.dev.stubservice import StubGenerationService

pytestmark = pytest.mark.e2e
PLUGINS = os.path.join(os.path.dirname(__file__), "..", "..", "plugins")
USER = "507f1f77bcf86cd799439012"


@pytest.fixture
def web_store():
    """The API reads the daemon's own SQLite file (a mongomock store is per process)."""
    return "sqlite"


def test_a_streamed_article_shows_rising_progress_in_jobs_show_and_the_api(
        tmp_path, sqs, make_queue, start_daemon, web_api, capsys):
    state = tmp_path / "state"  # the web_api fixture's state directory too
    api = web_api(queues=False, web_events_poll_s=0.05)
    urls = make_queue("articles")
    with StubGenerationService(stream=True, stream_chunk_words=50, stream_step_s=0.3) as stub:
        daemon = start_daemon(
            {"articles": {"url": urls["url"], "wait_time_s": 1, "visibility_timeout_s": 30}},
            processes=1, plugin_dirs=[os.path.abspath(PLUGINS)], plugins={},
            state_dir=str(state), fastapi_url=stub.url, progress_interval_s=0.5)
        config = str(daemon.log_path.parent / "vip-worker.toml")
        job_id = uuid.uuid4().hex[:24]
        seen_api: list[tuple[str, dict]] = []
        ended = threading.Event()

        def listen() -> None:
            with api.client() as client, client.stream(
                    "GET", f"/api/content/jobs/{job_id}/events",
                    headers=api.as_user(USER)) as response:
                for event in sse_events(response):
                    seen_api.append(event)
            ended.set()

        sqs.send_message(QueueUrl=urls["url"], MessageBody=json.dumps({
            "jobId": job_id, "userId": USER, "type": "articles",
            "timestamp": "2025-01-15T10:30:00Z",
            "payload": {"mode": "topic", "topic": "Tea", "wordCount": 1000}}))
        daemon.wait_for("message.started", job_id=job_id)
        listener = threading.Thread(target=listen, daemon=True)
        listener.start()

        shown: list[int] = []

        def show_until_done() -> bool:
            code, out, _ = run_cli(capsys, "jobs", "show", job_id, "--json",
                                   "--config", config)
            if code != 0:
                return False
            job = json.loads(out)
            shown.append(job["progress"])
            return job["status"] == "completed"

        wait_until(show_until_done, 60, interval_s=0.2, message="the job to complete")
        wait_until(ended.is_set, 15, message="the event stream to end")
        listener.join(5)
    assert daemon.events("message.succeeded", job_id=job_id)
    writing = sorted({p for p in shown if 10 < p < 80})
    assert len(writing) >= 3, shown  # several distinct steps while the words came
    assert shown == sorted(shown)  # never backwards
    api_steps = [d["progress"] for e, d in seen_api if e == "job"]
    assert len({p for p in api_steps if 10 < p < 80}) >= 3, api_steps
    assert api_steps == sorted(api_steps)
    assert seen_api[-1][0] == "end" and seen_api[-1][1]["status"] == "completed"
    assert all(d.get("progressEstimated") is False for _, d in seen_api)
