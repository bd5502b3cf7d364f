"""A loopback receiver of completion callbacks: records every POST, answers as told.

``answers`` is consumed one per request: an HTTP status to answer, or ``HOLD``: keep the
request unanswered until ``release()``, then drop the connection (the sender never learns
the outcome). Once the list is empty every request gets 200.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field

HOLD = "hold"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # None: held, then dropped


@dataclass
class CallbackReceiver:
    answers: list = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.held = threading.Event()  # a request is being held
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got = Received(self.path, dict(self.headers), body)
                with receiver.lock:
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.requests.append(got)
                if answer == HOLD:
                    receiver.held.set()
                    receiver.released.wait(60)
                    self.close_connection = True
                    return  # dropped unanswered
                got.answered = answer
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/vip"

    def release(self) -> None:
        self.released.set()

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.answered == 200]

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
