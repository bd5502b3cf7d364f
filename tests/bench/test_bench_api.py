"""bench.api's wrk client: bench/wrk_fixed_rate.lua paces wrk and reports its JSON line.

No timed assertions: a slow machine sends fewer requests, never more, so the checks are an
upper bound (unpaced, wrk would send thousands in a second) and the shape of the figures.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import api

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.answer({"seen": self.headers.get("X-User-Id")})

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posted.append(json.loads(body))
        self.answer({"ok": True}, 202)

    def answer(self, data, status=200):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.posted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_wrk_is_paced_to_the_rate_and_reports_its_figures(http_url):
    url, _ = http_url
    figures = api.wrk_rate(f"{url}/x", 40, 40, {"X-User-Id": "bench"}, connections=4)
    assert 0 < figures["requests"] <= 40 + 4  # one second at 40/s (+ one per connection)
    assert figures["slots"] >= figures["requests"]
    assert 0 <= figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert {"late_n", "late_max_ms", "p999_ms", "duration_s"} <= figures.keys()


def test_wrk_posts_the_body_file(http_url, tmp_path):
    url, server = http_url
    body = tmp_path / "body.json"
    body.write_text(json.dumps(api.ARTICLE))
    figures = api.wrk_rate(f"{url}/post", 20, 20, {}, connections=2, body_file=str(body))
    # wrk stops at its duration with at most one request in flight per connection: the
    # server may have read it (and had its answer reset) without wrk counting it.
    assert 0 < figures["requests"] <= len(server.posted) <= figures["requests"] + 2
    assert server.posted[0] == api.ARTICLE


def test_failed_requests_are_an_error_not_a_figure(http_url):
    url, _ = http_url
    closed = url.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
    with pytest.raises(RuntimeError, match="failed requests|no figures"):
        api.wrk_rate(f"{closed}/x", 20, 20, {}, connections=2)
