"""Streamed generation answers and the progress that follows them.

The client asks for a stream (``generation_stream``) and reads NDJSON or SSE as it
comes, counting words; a service that does not stream answers JSON as before. The
pipeline turns words into progress against ``wordCount`` (several increasing values,
``progressEstimated`` false), or, without a stream, estimates it from the type's
recent durations (``progressEstimated`` true)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.support.wait import wait_until
from vip_worker import config
from vip_worker.dev.stubservice import StubGenerationService
from vip_worker.errors import PermanentError
from vip_worker.message import Envelope
from vip_worker.pipeline import progress, streaming
from vip_worker.pipeline.generation import GenerationClient, GenerationUnavailable
from vip_worker.pipeline.runner import close_generation_client, run_job
from vip_worker.plugins import load_plugins
from vip_worker.plugins.context import STORE, HandlerContext, PollerContext
from vip_worker.testing import MemoryStore, run_handler

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MODES = ["topic", "keywords", "trends", "spin"]


@pytest.fixture
def streaming_service():
    with StubGenerationService(stream=True, stream_chunk_words=20, stream_step_s=0.0) as svc:
        yield svc


def client(url: str, stream: str) -> GenerationClient:
    return GenerationClient(url, article_path="/api/generation/{mode}",
                            image_path="/api/generation/image", modes=MODES,
                            connect_timeout_s=5, read_timeout_s=30, stream=stream)


@pytest.mark.parametrize("stream", ["auto", "ndjson", "sse"])
def test_a_streamed_article_is_read_as_it_comes(streaming_service, stream):
    counts: list[int] = []
    with client(streaming_service.url, stream) as c:
        result = c.article({"topic": "tea", "wordCount": 200}, on_words=counts.append,
                           job_id="j1")
    assert result["word_count"] == 200 and len(result["content"].split()) == 200
    assert result["usage"]["model"] == "stub-writer-1"
    assert counts == sorted(counts) and len(set(counts)) == 10 and counts[-1] == 200
    assert streaming_service.calls_by_job == {"j1": 1}


def test_off_or_a_service_that_does_not_stream_answers_json(generation, streaming_service):
    for url, stream in ((generation.url, "auto"), (streaming_service.url, "off")):
        counts: list[int] = []
        with client(url, stream) as c:
            result = c.article({"topic": "tea", "wordCount": 50}, on_words=counts.append)
        assert len(result["content"].split()) == 50 and counts == []


def test_an_error_answer_is_classified_as_before_when_streaming(streaming_service):
    with client(streaming_service.url, "auto") as c:
        with pytest.raises(PermanentError, match="HTTP 422"):
            c.article({"topic": "tea", "wordCount": 0}, on_words=lambda n: None)
        streaming_service.mode = "error500"
        with pytest.raises(GenerationUnavailable, match="HTTP 500"):
            c.article({"topic": "tea"}, on_words=lambda n: None)


def test_stream_parsing():
    done = json.dumps({"done": True, "result": {"title": "T"}})
    ndjson = [json.dumps({"delta": "one two"}), "", json.dumps({"delta": "three"}), done]
    seen: list[int] = []
    assert streaming.read_stream(iter(ndjson), "ndjson", seen.append) == {"title": "T"}
    assert seen == [2, 3]
    sse = [": comment", "event: delta", 'data: {"delta": "a b c"}', "", "event: done",
           f"data: {done}", ""]
    assert streaming.read_stream(iter(sse), "sse", None) == {"title": "T"}
    with pytest.raises(streaming.StreamBroken, match="after 2 words"):
        streaming.read_stream(iter(ndjson[:2]), "ndjson", None)
    with pytest.raises(streaming.StreamBroken, match="overloaded"):
        streaming.read_stream(iter(['{"error": "overloaded"}']), "ndjson", None)
    with pytest.raises(PermanentError, match="not a JSON object"):
        streaming.read_stream(iter(["<html>"]), "ndjson", None)
    assert streaming.stream_kind("text/event-stream; charset=utf-8") == "sse"
    assert streaming.stream_kind("application/json") is None


class RecordingProgress:
    """A store that records every ``progress_many`` update, in order."""

    def __init__(self, store) -> None:
        self._store = store
        self.updates: list[tuple] = []

    def progress_many(self, updates, now):
        self.updates.extend(updates)
        return self._store.progress_many(updates, now)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_progress_follows_the_words_of_a_streamed_article(store):
    with StubGenerationService(stream=True, stream_chunk_words=50, stream_step_s=0.15) as svc:
        settings = config.load(None, environ={
            "FASTAPI_URL": svc.url, "VIP_WORKER_PLUGIN_DIRS": str(PLUGINS),
            "VIP_WORKER_PROGRESS_INTERVAL_S": "0.5"}, require_queues=False)
        handler = load_plugins(settings).registry.get("articles").fn
        recording, resources = RecordingProgress(store), {}
        message = Envelope(job_id="s1", user_id="u1", type="articles", timestamp="",
                           payload={"topic": "tea", "wordCount": 1000})
        try:
            outcome = run_handler(handler, message, settings=settings, store=recording,
                                  resources=resources)
        finally:
            close_generation_client(PollerContext(0, settings, resources))
    assert outcome.succeeded, outcome.error
    percents = [u[2] for u in recording.updates]
    # 20 chunks over ~3 s, throttled to one write per 0.5 s: several, rising, measured.
    assert len(percents) >= 3 and percents == sorted(set(percents)), percents
    assert all(10 < p < 80 for p in percents)
    assert all(u[4] is False and "words" in u[3] for u in recording.updates)
    assert [p for p, _ in outcome.progress] == [10, 80]  # the runner's own steps
    job = store.get_job("s1")
    assert job["status"] == "completed" and job["progressEstimated"] is False


def test_without_a_stream_progress_is_estimated_from_the_recent_median():
    store = MemoryStore()
    poller = PollerContext(index=0, settings=None)
    poller.provide(STORE, lambda: store)
    progress.record_duration(HandlerContext.for_message(
        poller, plugin="p", message_id="m0", job_id="j0", queue="q", receive_count=1,
        max_attempts=5, max_job_time_s=60, log_fields={}), "articles", 2.0)

    def ctx(job_id):
        c = HandlerContext.for_message(poller, plugin="p", message_id=job_id, job_id=job_id,
                                       queue="q", receive_count=1, max_attempts=5,
                                       max_job_time_s=60, log_fields={})
        return c

    message = Envelope(job_id="e1", user_id="u1", type="articles", timestamp="",
                       payload={"topic": "tea"})
    poller.settings = type("S", (), {"progress_interval_s": 0.05})()
    release = threading.Event()

    def generate():  # runs until the estimate has moved twice, then answers
        wait_until(lambda: (store.get_job("e1") or {}).get("progressEstimated") is True
                   and store.get_job("e1")["progress"] > 11, 10,
                   message="an estimated progress")
        release.set()
        return {"title": "T", "content": "c"}

    run_job(message, ctx("e1"), generate, "generated_content")
    assert release.is_set()
    job = store.get_job("e1")
    # Estimated while generating (above); the runner's own measured steps end it.
    assert job["status"] == "completed" and job["progressEstimated"] is False
    assert len(progress.durations(ctx("x"))["articles"]) == 2  # this one's duration kept


def test_the_first_job_of_a_type_gets_no_estimate():
    store = MemoryStore()
    poller = PollerContext(index=0, settings=None)
    poller.provide(STORE, lambda: store)
    c = HandlerContext.for_message(poller, plugin="p", message_id="m", job_id="f1",
                                   queue="q", receive_count=1, max_attempts=5,
                                   max_job_time_s=60, log_fields={})
    assert progress.median_duration_s(c, "articles") is None
    estimator = progress.Estimator(progress.ProgressReporter(c), None).start()
    assert estimator.thread is None
    estimator.stop()
