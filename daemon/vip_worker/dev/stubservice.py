"""A stub of the FastAPI generation service, for the dev stack and the tests.

``POST /api/generation/{topic|keywords|trends|spin}`` answers a plausible article
of ``word_count`` words, ``POST /api/generation/image`` an image URL served by the
stub itself, both with a ``usage`` object (``promptTokens``, ``completionTokens``,
``images``, ``model``), ``GET /health`` ``{"ok": true}``. Generation calls are counted per
path and per job (the ``X-Job-Id`` header). Errors look like FastAPI's: 404 and
422 with ``{"detail": ...}``. Binds to 127.0.0.1 unless told otherwise.

Knobs, settable while it runs: ``latency_s`` (a sleep per generation call),
``failure_rate`` (that share of calls answers 503 "model overloaded") and
``mode``, the fault injected into every generation call:

- ``ok``: normal answers.
- ``error500`` / ``error429``: 500, or 429 with ``Retry-After``.
- ``hang``: no answer for ``hang_s`` seconds (longer than any test's read timeout).
- ``reset``: the connection is reset (RST) without a response.
- ``garbage``: 200 with a non-JSON body.
- ``error503``: 503 "model overloaded" with ``Retry-After: fault_retry_after_s``.
- ``stall``: 200 JSON whose body stops after its first bytes (for ``hang_s`` seconds).
- ``keepalive``: a stream (NDJSON or SSE, as ``Accept`` asks) of keep-alives only (SSE
  ``:`` comments, NDJSON blank lines), one every ``stream_step_s``, for ``hang_s`` seconds,
  without chunked encoding (the body ends with the connection).
- ``midstream``: a stream that sends a few words, then ``{"error": ...}``.

A 429 mode for the quota governor (``throttle``): every Nth generation call, or every
call for a window, answers 429 with ``Retry-After``. Every generation call is logged with
its wall-clock time (``call_times``, ``most_in_window``), so tests can check the fleet's
calls against a rate limit window by window.

``stream``: an article call whose ``Accept`` names ``application/x-ndjson`` or
``text/event-stream`` is answered as a stream of its words (``send_stream``).

Standalone: ``python -m vip_worker.dev.stubservice --port 8000 --latency 0.5 --failure-rate 0.1``
(``--throttle-every N --retry-after S`` for the 429 mode, ``--stream`` to stream).

Over 400 lines because it is a standalone service (``python -m``), its fault modes
and its command line in one file that tests and the dev stack start as a process.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from vip_worker import exitcodes

log = logging.getLogger("vip_worker.dev.stubservice")
FAULT_MODES = ("ok", "error500", "error429", "hang", "reset", "garbage", "error503", "stall",
               "keepalive", "midstream")
ARTICLE_MODES = ("topic", "keywords", "trends", "spin")
PREFIX = "/api/generation/"
MAX_REQUEST_BYTES = 1024 * 1024
WORDS_MIN, WORDS_MAX, WORDS_DEFAULT = 1, 20000, 1000
SIDE_MIN, SIDE_MAX, SIDE_DEFAULT = 64, 4096, 1024
ARTICLE_MODEL, IMAGE_MODEL = "stub-writer-1", "stub-image-1"  # named in its usage reports
STREAM_MEDIA = {"ndjson": "application/x-ndjson", "sse": "text/event-stream"}
SENTENCES = (
    "Most {audience} underestimate how much {topic} depends on steady, repeatable habits.",
    "A good first step is to write down what success with {topic} looks like in numbers.",
    "Experienced practitioners treat {keyword} as a tool rather than a goal in itself.",
    "The common mistake is to chase every new idea instead of testing one at a time.",
    "Small, measured changes make it easy to see what actually works and what does not.",
    "When results stall, return to the fundamentals and check each assumption in turn.",
    "Data helps, but judgement decides which numbers matter for {topic}.",
    "Review the plan every few weeks and drop whatever no longer earns its place.",
    "Clear goals turn {keyword} from a buzzword into a practical advantage.",
    "Over time these choices compound, and {topic} becomes far less of a guessing game.",
    "Readers who keep notes on their decisions learn faster than those who do not.",
    "The best advice on {topic} is specific, testable and honest about its trade-offs.",
)


def validation_error(kind: str, field: str, msg: str, value: Any = None) -> dict:
    """One item of FastAPI's (pydantic v2's) 422 ``detail`` list."""
    return {"type": kind, "loc": ["body", field], "msg": msg, "input": value}


def not_an_object(body: Any) -> tuple[int, dict]:
    return 422, {"detail": [{"type": "model_attributes_type", "loc": ["body"], "input": body,
                             "msg": "Input should be a valid dictionary"}]}


def check_int(body: dict, field: str, lo: int, hi: int, default: int, errors: list) -> int:
    value = body.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool):
        errors.append(validation_error("int_type", field, "Input should be a valid integer",
                                       value))
    elif not lo <= value <= hi:
        errors.append(validation_error("range", field, f"Input should be between {lo} and {hi}",
                                       value))
    return value


def article_subject(mode: str, body: dict, errors: list) -> str:
    """What the article is about; a missing required field is appended to ``errors``."""
    topic = body.get("topic")
    if isinstance(topic, str) and topic.strip():
        return topic.strip()
    keywords = body.get("keywords")
    if mode == "keywords" and isinstance(keywords, list) and keywords:
        return ", ".join(str(k) for k in keywords)
    content = body.get("content")
    if mode == "spin" and isinstance(content, str) and content.strip():
        return " ".join(content.split()[:6])
    if mode == "trends":
        return "this week's trends"
    field = {"keywords": "keywords", "spin": "content"}.get(mode, "topic")
    errors.append(validation_error("missing", field, "Field required", body))
    return ""


def article_text(subject: str, words: int, audience: str, keywords: list, rng: random.Random
                 ) -> str:
    """Paragraphs of 4 to 6 sentences about ``subject``, exactly ``words`` words long."""
    keyword = keywords[0] if keywords else subject
    fill = {"topic": subject, "audience": audience or "readers", "keyword": keyword}
    paragraphs = [f"This guide looks at {subject} and what it takes to get it right.".split()]
    count = len(paragraphs[0])
    while count < words:
        sentences = [rng.choice(SENTENCES).format(**fill) for _ in range(rng.randint(4, 6))]
        paragraphs.append(" ".join(sentences).split())
        count += len(paragraphs[-1])
    kept, budget = [], words
    for paragraph in paragraphs:
        kept.append(paragraph[:budget])
        budget -= len(kept[-1])
        if budget <= 0:
            break
    last = kept[-1][-1].rstrip(",;:")
    kept[-1][-1] = last if last.endswith(".") else last + "."
    return "\n\n".join(" ".join(p) for p in kept)


def article_response(mode: str, body: Any, rng: random.Random) -> tuple[int, dict]:
    if mode not in ARTICLE_MODES:
        return 404, {"detail": f"unknown generation mode {mode!r}"}
    if not isinstance(body, dict):
        return not_an_object(body)
    errors: list[dict] = []
    subject = article_subject(mode, body, errors)
    words = check_int(body, "word_count", WORDS_MIN, WORDS_MAX, WORDS_DEFAULT, errors)
    keywords = body.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        errors.append(validation_error("list_type", "keywords", "Input should be a valid list "
                                       "of strings", keywords))
    if errors:
        return 422, {"detail": errors}
    tone = str(body.get("tone") or "Professional")
    title = f"{subject[:1].upper()}{subject[1:]}: A Practical Guide"
    content = article_text(subject, words, str(body.get("target_audience") or ""), keywords,
                           rng)
    slug = "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())
    seo = {"meta_title": title[:60], "meta_description": content.split("\n")[0][:155],
           "keywords": keywords or subject.lower().split()[:5], "slug": slug,
           "optimized": bool(body.get("seo_optimization", True))}
    return 200, {"title": title, "content": content, "word_count": len(content.split()),
                 "mode": mode, "tone": tone, "seo": seo,
                 "usage": article_usage(body, len(content.split()))}


def article_usage(body: dict, words: int) -> dict:
    """What a language model would report: ~4 characters a token in, ~4/3 tokens a word out."""
    prompt = len(json.dumps(body, separators=(",", ":")))
    return {"promptTokens": -(-prompt // 4), "completionTokens": -(-words * 4 // 3),
            "model": ARTICLE_MODEL}


def image_response(body: Any, base_url: str) -> tuple[int, dict]:
    if not isinstance(body, dict):
        return not_an_object(body)
    errors: list[dict] = []
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append(validation_error("missing", "prompt", "Field required", body))
    width = check_int(body, "width", SIDE_MIN, SIDE_MAX, SIDE_DEFAULT, errors)
    height = check_int(body, "height", SIDE_MIN, SIDE_MAX, SIDE_DEFAULT, errors)
    if errors:
        return 422, {"detail": errors}
    return 200, {"url": f"{base_url}/media/{uuid.uuid4()}.png", "prompt": prompt,
                 "width": width, "height": height,
                 "usage": {"images": 1, "promptTokens": -(-len(prompt) // 4),
                           "model": IMAGE_MODEL}}


def stream_event(kind: str, name: str, doc: dict) -> bytes:
    """One streamed event: an NDJSON line, or an SSE ``event:``/``data:`` block."""
    data = json.dumps(doc)
    if kind == "ndjson":
        return (data + "\n").encode()
    return f"event: {name}\ndata: {data}\n\n".encode()


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG, so an image URL the stub hands out can be fetched."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        super().__init__(address, handler)
        self.resetting: set[socket.socket] = set()  # connections to end with an RST

    def shutdown_request(self, request) -> None:
        if request in self.resetting:
            # No SHUT_WR (a FIN) first: with SO_LINGER 0 the close sends an RST.
            self.resetting.discard(request)
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (read timeout) makes our late write fail: not news.
        log.debug("stubservice.request_failed", exc_info=True)


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a requests.Session expects
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    timeout = 30  # an idle keep-alive connection does not hold a thread for ever
    service: StubGenerationService

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests and the dev stack have their own output

    def setup(self) -> None:
        super().setup()
        self.service.track(self.connection, opened=True)

    def finish(self) -> None:
        self.service.track(self.connection, opened=False)
        super().finish()

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(doc).encode(), "application/json", headers)

    def send_bytes(self, status: int, data: bytes, content_type: str,
                   headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.service.record(path, None)
        if path == "/health":
            self.send_json(200, {"ok": True})
        elif path.startswith("/media/") and path.endswith(".png"):
            self.send_bytes(200, tiny_png(), "image/png")
        else:
            self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self.close_connection = True
            self.send_json(413 if length > 0 else 400, {"detail": "bad Content-Length"})
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            body = None
            invalid = {"detail": [{"type": "json_invalid", "loc": ["body", exc.pos],
                                   "msg": "JSON decode error", "input": {}}]}
        else:
            invalid = None
        self.service.record(path, body, self.headers.get("X-Job-Id"))
        name = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        if not name or "/" in name:
            self.send_json(404, {"detail": "Not Found"})
        elif (retry_after := self.service.throttled()) is not None:
            self.send_json(429, {"detail": "rate limited (stub throttle)"},
                           {"Retry-After": f"{retry_after:g}"})
        elif self.inject_fault():
            return
        elif invalid:
            self.send_json(422, invalid)
        elif name == "image":
            self.send_json(*image_response(body, self.service.url))
        else:
            status, doc = article_response(name, body, self.service.text_rng())
            kind = self.stream_kind()
            if status == 200 and kind:
                self.send_stream(doc, kind)
            else:
                self.send_json(status, doc)

    # -- streaming (NDJSON or SSE, as the Accept header asks, when ``stream`` is on) ----

    def stream_kind(self) -> str | None:
        """``"ndjson"`` or ``"sse"`` when the service streams and the client accepts it
        (the first of the two named in ``Accept``), else None: one JSON answer."""
        if not self.service.stream:
            return None
        accept = self.headers.get("Accept") or ""
        found = {kind: accept.find(media) for kind, media in STREAM_MEDIA.items()}
        found = {kind: at for kind, at in found.items() if at >= 0}
        return min(found, key=found.get) if found else None

    def send_stream(self, doc: dict, kind: str) -> None:
        """The article as it is "written": ``{"delta": "<words>"}`` events of
        ``stream_chunk_words`` words, ``stream_step_s`` apart, then ``{"done": true,
        "result": {...}}``; chunked transfer encoding, so the connection stays open."""
        self.send_response(200)
        self.send_header("Content-Type", STREAM_MEDIA[kind])
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        words = doc["content"].split(" ")
        step = max(1, self.service.stream_chunk_words)
        for start in range(0, len(words), step):
            delta = " ".join(words[start:start + step])
            self.send_chunk(stream_event(kind, "delta", {"delta": delta}))
            if self.service.stopping.wait(self.service.stream_step_s):
                break
        self.send_chunk(stream_event(kind, "done", {"done": True, "result": doc}))
        self.wfile.write(b"0\r\n\r\n")

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def inject_fault(self) -> bool:
        """Apply latency, the fault mode and the failure rate; True if the call is answered."""
        service = self.service
        if service.latency_s > 0 and service.stopping.wait(service.latency_s):
            return self.reset()
        mode = service.mode
        if mode == "hang":
            service.stopping.wait(service.hang_s)
            self.close_connection = True
            return True
        if mode == "reset":
            return self.reset()
        if mode == "garbage":
            self.send_bytes(200, b"<html><body>Bad Gateway</body></html>", "text/html")
        elif mode == "error500":
            self.send_json(500, {"detail": "internal server error (injected)"})
        elif mode == "error429":
            self.send_json(429, {"detail": "rate limited (injected)"}, {"Retry-After": "2"})
        elif mode == "error503":
            self.send_json(503, {"detail": "model overloaded (injected)"},
                           {"Retry-After": f"{service.fault_retry_after_s:g}"})
        elif mode == "stall":
            self.send_stalled_body()
        elif mode == "keepalive":
            self.send_keepalives()
        elif mode == "midstream":
            self.send_midstream_error()
        elif service.roll_failure():
            self.send_json(503, {"detail": "model overloaded"})
        else:
            return False
        return True

    def send_stalled_body(self) -> None:
        """200 JSON announcing 100 bytes, sending a few, then nothing for ``hang_s``."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b'{"content": "')
        self.wfile.flush()
        self.service.stopping.wait(self.service.hang_s)

    def send_midstream_error(self) -> None:
        """A stream (the kind ``Accept`` asks) of one delta, then the service's error."""
        kind = "sse" if STREAM_MEDIA["ndjson"] not in (self.headers.get("Accept") or "") \
            else "ndjson"
        self.send_response(200)
        self.send_header("Content-Type", STREAM_MEDIA[kind])
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.send_chunk(stream_event(kind, "delta", {"delta": "Most readers"}))
        self.send_chunk(stream_event(kind, "error", {"error": "model crashed (injected)"}))
        self.wfile.write(b"0\r\n\r\n")

    def send_keepalives(self) -> None:
        """A stream that sends keep-alives only, never an event, for ``hang_s``."""
        accept = self.headers.get("Accept") or ""
        kind = "sse" if STREAM_MEDIA["sse"] in accept and STREAM_MEDIA["ndjson"] not in \
            accept else "ndjson"
        self.close_connection = True  # no chunked encoding: the body ends with the connection
        self.send_response(200)
        self.send_header("Content-Type", STREAM_MEDIA[kind])
        self.send_header("Connection", "close")
        self.end_headers()
        service = self.service
        until = time.monotonic() + service.hang_s
        try:
            while time.monotonic() < until:
                self.wfile.write(b": keep-alive\n\n" if kind == "sse" else b"\n")
                self.wfile.flush()
                if service.stopping.wait(service.stream_step_s):
                    break
        except OSError:
            pass  # the client gave up: what the keep-alives are for

    def reset(self) -> bool:
        """Close at once with SO_LINGER 0: the peer gets an RST, not a response."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.resetting.add(self.connection)  # closed, unanswered, after finish()
        return True


class StubGenerationService:
    """The stub server, run in a background thread. ``start()``, ``url``, ``stop()``.

    :ivar calls: requests seen per path (a snapshot, thread-safe).
    :ivar calls_by_job: generation calls per ``X-Job-Id`` (a snapshot).
    :ivar last_path: path of the last request; ``last_body`` its parsed JSON body.
    :ivar latency_s: seconds each generation call waits before answering.
    :ivar failure_rate: share (0..1) of generation calls that answer 503.
    :ivar mode: the injected fault, one of ``FAULT_MODES``.
    :ivar hang_s: how long a ``hang`` call waits (``stop()`` ends the wait).
    :ivar fault_retry_after_s: the ``Retry-After`` of the ``error503`` mode.
    :ivar stream: stream articles (NDJSON or SSE) to a client whose ``Accept`` asks.
    :ivar stream_chunk_words: words per streamed event; ``stream_step_s``: the pause
        after each (a 1,000-word article at the defaults streams over 4 s).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0,
                 failure_rate: float = 0.0, seed: int | None = None, hang_s: float = 60.0,
                 stream: bool = False, stream_chunk_words: int = 25,
                 stream_step_s: float = 0.1):
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.hang_s = hang_s
        self.fault_retry_after_s = 7.0
        self.stream = stream
        self.stream_chunk_words = stream_chunk_words
        self.stream_step_s = stream_step_s
        self.stopping = threading.Event()
        self.last_path: str | None = None
        self.last_body: Any = None
        self._mode = "ok"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._called = threading.Condition(self._lock)
        self._calls: Counter[str] = Counter()
        self._job_calls: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        # The 429 mode (``throttle``) and the generation calls' wall-clock times.
        self._log: list[tuple[float, str | None]] = []  # (epoch s, the body's topic)
        self._throttle_every = 0
        self._throttle_until = 0.0
        self._retry_after_s = 10.0
        self._throttled = 0
        self._server: StubServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}, got {value!r}")
        self._mode = value

    @property
    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    @property
    def calls_by_job(self) -> dict[str, int]:
        """Generation calls per job (the client's ``X-Job-Id`` header), a snapshot."""
        with self._lock:
            return dict(self._job_calls)

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub service is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> StubGenerationService:
        handler = type("BoundStubHandler", (StubHandler,), {"service": self})
        self.stopping.clear()
        self._server = StubServer((self.host, self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="stub-generation-service", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging calls and idle keep-alive connections are cut."""
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> StubGenerationService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_calls(self, count: int, path: str | None = None, timeout_s: float = 5.0) -> bool:
        """Block until ``count`` requests (to ``path``, or in all) were seen; False on timeout."""
        def seen() -> int:
            return self._calls[path] if path else sum(self._calls.values())
        with self._called:
            return self._called.wait_for(lambda: seen() >= count, timeout_s)

    def record(self, path: str, body: Any, job_id: str | None = None) -> None:
        with self._called:
            if path.startswith(PREFIX):
                topic = body.get("topic") if isinstance(body, dict) else None
                self._log.append((time.time(), topic if isinstance(topic, str) else None))
            self._calls[path] += 1
            if job_id and path.startswith(PREFIX):
                self._job_calls[job_id] += 1
            if body is not None or path.startswith(PREFIX):
                self.last_path, self.last_body = path, body
            self._called.notify_all()

    # -- the 429 mode and the call log (the quota governor's tests) --------------------

    def throttle(self, *, every: int = 0, window_s: float = 0.0,
                 retry_after_s: float = 10.0) -> None:
        """Answer 429 with ``Retry-After: retry_after_s`` to every ``every``-th generation
        call, and to every call for the next ``window_s`` seconds. ``throttle()`` stops."""
        with self._lock:
            self._throttle_every = max(0, int(every))
            self._throttle_until = time.monotonic() + window_s if window_s > 0 else 0.0
            self._retry_after_s = retry_after_s

    def throttled(self) -> float | None:
        """The Retry-After of this call if the 429 mode refuses it, else None (the call
        was recorded already: the count is the calls seen, this one included)."""
        with self._lock:
            nth = len(self._log)
            if (self._throttle_until and time.monotonic() < self._throttle_until) or (
                    self._throttle_every and nth % self._throttle_every == 0):
                self._throttled += 1
                return self._retry_after_s
        return None

    @property
    def throttled_calls(self) -> int:
        with self._lock:
            return self._throttled

    def call_times(self) -> list[float]:
        """Wall-clock times (epoch seconds) of the generation calls seen, in order."""
        with self._lock:
            return [at for at, _ in self._log]

    def call_topics(self) -> list[str | None]:
        """Each generation call's ``topic`` (None without one), in order."""
        with self._lock:
            return [topic for _, topic in self._log]

    def most_in_window(self, window_s: float = 60.0) -> int:
        """The most generation calls seen in any window of ``window_s`` seconds."""
        times, most, first = self.call_times(), 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= window_s:
                first += 1
            most = max(most, last - first + 1)
        return most

    def track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def roll_failure(self) -> bool:
        with self._lock:
            return self.failure_rate > 0 and self._rng.random() < self.failure_rate

    def text_rng(self) -> random.Random:
        """A generator for one article, seeded from the service's (reproducible with ``seed``)."""
        with self._lock:
            return random.Random(self._rng.random())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vip_worker.dev.stubservice",
                                     description="A stub of the FastAPI generation service.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation call")
    parser.add_argument("--failure-rate", type=float, default=0.0,
                        help="share of generation calls answering 503 (0..1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument("--fault", choices=FAULT_MODES, default="ok", help="fault to inject")
    parser.add_argument("--throttle-every", type=int, default=0, metavar="N",
                        help="answer every Nth generation call 429 (0: never)")
    parser.add_argument("--retry-after", type=float, default=10.0, metavar="S",
                        help="the Retry-After of those 429 answers")
    parser.add_argument("--stream", action="store_true",
                        help="stream articles (NDJSON or SSE) when the client accepts it")
    args = parser.parse_args(argv)
    if not 0.0 <= args.failure_rate <= 1.0:
        parser.error("--failure-rate must be in 0..1")
    service = StubGenerationService(args.host, args.port, args.latency, args.failure_rate,
                                    args.seed)
    service.mode = args.fault
    service.throttle(every=args.throttle_every, retry_after_s=args.retry_after)
    service.stream = args.stream
    try:
        service.start()
    except OSError as exc:
        print(f"stubservice: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    stop_signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_signals.append(signum))
    print(f"stub generation service on {service.url} (Ctrl-C stops)", flush=True)
    try:
        while not stop_signals:
            time.sleep(0.2)  # a signal interrupts the sleep; the handler only records it
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
