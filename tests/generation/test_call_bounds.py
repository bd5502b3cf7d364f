"""The review's client defects, each through a real answer of the stub service: a 503
with ``Retry-After`` pauses the provider; a stream (keep-alives or a trickle of words)
ends at the call's deadline; a plain JSON answer whose body stalls is transient."""

from __future__ import annotations

import itertools
import re

import pytest
import requests

from vip_worker.dev.stubservice import StubGenerationService
from vip_worker.errors import Deferred, PermanentError
from vip_worker.pipeline import streaming
from vip_worker.pipeline.generation import GenerationClient, GenerationUnavailable
from vip_worker.pipeline.quota import Governor
from vip_worker.store.quota import QuotaLimits
from vip_worker.testing import MemoryStore

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("loopback_only")]
MODES = ["topic"]



@pytest.fixture
def stub():
    with StubGenerationService(seed=3, hang_s=30.0, stream_step_s=0.05) as service:
        yield service


def client(url: str, stream: str = "off", read_timeout_s: float = 10.0) -> GenerationClient:
    return GenerationClient(url, article_path="/api/generation/{mode}",
                            image_path="/api/generation/image", modes=MODES,
                            connect_timeout_s=2.0, read_timeout_s=read_timeout_s,
                            stream=stream)


def test_a_503_with_retry_after_pauses_the_provider(stub):
    stub.mode = "error503"
    store = MemoryStore()
    governor = Governor(lambda: store, {"generation": QuotaLimits(rpm=100)})
    with client(stub.url) as c:
        with pytest.raises(GenerationUnavailable) as raw:
            c.article({"topic": "tea"})
        assert (raw.value.status, raw.value.delay_s) == (503, 7.0)
        with pytest.raises(Deferred) as deferred:
            with governor.permit("generation", user="u1"):
                c.article({"topic": "tea"})
    assert deferred.value.delay_s == 7.0
    assert str(deferred.value).startswith("provider_paused:generation")
    assert store.quota_record("generation")["pausedUntil"] is not None


@pytest.mark.parametrize("stream", ["ndjson", "sse"])
def test_a_stream_of_keepalives_ends_at_the_calls_deadline(stub, stream):
    stub.mode = "keepalive"  # keep-alives for 30 s, not chunked; the call has 1 s
    with client(stub.url, stream) as c:
        with pytest.raises(GenerationUnavailable, match="deadline") as caught:
            c.article({"topic": "tea"}, read_timeout_s=1.0, on_words=lambda n: None)
    assert caught.value.status == 200
    # Read as they came (not in 512-byte blocks that arrive after the deadline).
    assert int(re.search(r"after (\d+) bytes", str(caught.value)).group(1)) > 0


def test_a_trickle_of_words_ends_at_the_calls_deadline(stub):
    stub.stream, stub.stream_chunk_words, stub.stream_step_s = True, 1, 0.05
    counts: list[int] = []  # 2,000 words at 20 a second: 100 s; the call has 1 s
    with client(stub.url, "auto") as c:
        with pytest.raises(GenerationUnavailable, match="deadline"):
            c.article({"topic": "tea", "wordCount": 2000}, read_timeout_s=1.0,
                      on_words=counts.append)
    assert counts and counts[-1] < 2000


def test_a_stalled_json_body_is_transient_when_a_stream_was_asked_for(stub):
    stub.mode = "stall"
    for stream in ("auto", "off"):
        with client(stub.url, stream, read_timeout_s=0.5) as c:
            with pytest.raises(GenerationUnavailable, match="read timed out") as caught:
                c.article({"topic": "tea"}, on_words=lambda n: None)
        assert not isinstance(caught.value, requests.RequestException)


def fake_clock(step_s: float):
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


@pytest.mark.parametrize("kind,keepalive", [("sse", ": ping"), ("sse", ""), ("ndjson", "")])
def test_the_reader_checks_the_deadline_on_every_line(kind, keepalive):
    lines = itertools.repeat(keepalive)  # never an event, never an end
    with pytest.raises(streaming.StreamBroken, match="deadline"):
        streaming.read_stream(lines, kind, None, deadline=50.0, clock=fake_clock(1.0))


def test_keepalives_count_toward_the_stream_limit(monkeypatch):
    monkeypatch.setattr(streaming, "MAX_STREAM_BYTES", 1000)
    lines = itertools.repeat(": " + "x" * 98)
    with pytest.raises(PermanentError, match="longer than 1000 bytes"):
        streaming.read_stream(lines, "sse", None)


def test_a_crlf_split_across_chunks_does_not_cut_an_sse_event():
    chunks = [b'data: {"delta":\r', b'\ndata: "one two"}\r\n\r\ndata: {"done": true, ',
              b'"result": {"content": "caf\xc3', b'\xa9"}}\r\n\r\n']
    counts: list[int] = []
    result = streaming.read_stream(streaming.lines_of(chunks), "sse", counts.append)
    assert (result, counts) == ({"content": "café"}, [2])


@pytest.mark.parametrize("body,lines", [
    (b"a\nb\r\nc\rd", ["a", "b", "c", "d"]),
    (b"a\r\n\r\nb\n", ["a", "", "b"]),
    (b"a\r", ["a"]),
    (b"", []),
])
def test_lines_are_split_at_every_kind_of_break_however_the_body_is_chunked(body, lines):
    for size in (1, 2, 3, len(body) or 1):
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert list(streaming.lines_of(chunks)) == lines


def test_a_streamed_article_in_utf8_keeps_its_characters(stub):
    stub.stream = True
    with client(stub.url, "sse") as c:
        result = c.article({"topic": "café crème", "wordCount": 40},
                           on_words=lambda n: None)
    assert "café crème" in result["content"] or "café crème" in result["title"]


@pytest.mark.parametrize("stream", ["ndjson", "sse"])
def test_an_error_mid_stream_counts_for_the_breaker(stub, stream):
    stub.mode = "midstream"
    store = MemoryStore()
    governor = Governor(lambda: store, {"generation": QuotaLimits(breaker_failures=1)})
    with client(stub.url, stream) as c:
        with pytest.raises(GenerationUnavailable, match="model crashed"):
            with governor.permit("generation", user="u1"):
                c.article({"topic": "tea"}, on_words=lambda n: None)
    assert store.quota_record("generation")["breaker"]["state"] == "open"
