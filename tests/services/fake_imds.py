"""A fake EC2 instance metadata service (IMDSv2 only) on 127.0.0.1, for the spot watcher.

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` -> a token
  (400 without the header);
- every GET needs a live token in ``X-aws-ec2-metadata-token``, else 401;
- ``/latest/meta-data/spot/instance-action``: 404 until ``arm_spot()``;
- ``/latest/meta-data/autoscaling/target-lifecycle-state``: ``InService`` until
  ``set_lifecycle("Terminated")`` (``None``: 404, not in an Auto Scaling group).

``requests`` counts (method, path) pairs; ``revoke_tokens()`` makes every token issued so
far answer 401, as after an expiry.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
ASG_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"


class FakeImds:
    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.tokens: set[str] = set()
        self.issued = 0
        self.spot_action: dict | None = None
        self.lifecycle: str | None = "InService"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler_class())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> FakeImds:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    # -- what the test controls ---------------------------------------------------------

    def arm_spot(self, action: str = "terminate", when: datetime | None = None) -> None:
        when = when or datetime.now(UTC)
        stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            self.spot_action = {"action": action, "time": stamp}

    def set_lifecycle(self, state: str | None) -> None:
        with self.lock:
            self.lifecycle = state

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return self.requests[(method, path)]

    # -- the HTTP side ------------------------------------------------------------------

    def handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                fake.record("PUT", self.path)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != TOKEN_PATH:
                    self.answer(404, "")
                elif not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    self.answer(400, "")
                else:
                    self.answer(200, fake.issue_token())

            def do_GET(self) -> None:
                fake.record("GET", self.path)
                if not fake.valid(self.headers.get("X-aws-ec2-metadata-token", "")):
                    self.answer(401, "")
                    return
                status, body = fake.metadata(self.path)
                self.answer(status, body)

            def answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args) -> None:
                pass

        return Handler

    def record(self, method: str, path: str) -> None:
        with self.lock:
            self.requests[(method, path)] += 1

    def issue_token(self) -> str:
        with self.lock:
            self.issued += 1
            token = f"token-{self.issued}"
            self.tokens.add(token)
            return token

    def valid(self, token: str) -> bool:
        with self.lock:
            return token in self.tokens

    def metadata(self, path: str) -> tuple[int, str]:
        with self.lock:
            if path == SPOT_PATH:
                return (200, json.dumps(self.spot_action)) if self.spot_action else (404, "")
            if path == ASG_PATH:
                return (200, self.lifecycle) if self.lifecycle is not None else (404, "")
        return 404, ""
