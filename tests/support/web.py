"""The job API served by a real uvicorn on 127.0.0.1, in a thread; HTTP helpers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.wait import wait_until
from vip_worker.web.app import create_app
from vip_worker.web.server import bind, make_server, url_of

ARTICLE = {"mode": "topic", "topic": "Fantasy Football Strategies", "wordCount": 1500,
           "tone": "Professional", "seoOptimization": True, "includeImages": False}


class WebServer:
    """``create_app(settings, producer)`` served until ``stop()`` (which waits for it)."""

    def __init__(self, settings, producer) -> None:
        self.app = create_app(settings, producer)
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = make_server(settings, self.app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="web-api", daemon=True)

    def start(self) -> WebServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 15, message="uvicorn started",
                   fail_if=lambda: not self.thread.is_alive() and "the server thread ended")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@dataclass
class Api:
    """A started API, its settings and store, and the keys made for it."""

    server: WebServer
    settings: Any
    store: Any
    keys: dict[str, str] = field(default_factory=dict)  # role -> key text

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, **kwargs)

    def as_user(self, user: str, role: str = "backend") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}", "X-User-Id": user}

    def post(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        with self.client() as client:
            return client.post(path, json=body, headers=headers)

    def get(self, path: str, headers: dict[str, str], **params) -> httpx.Response:
        with self.client() as client:
            return client.get(path, headers=headers, params=params)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) of a Server-Sent Events response, as they arrive."""
    event, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def bad_fields(response: httpx.Response) -> set[str]:
    """The field names a 422 names (the last element of each error's loc)."""
    assert response.status_code == 422, response.text
    return {str(error["loc"][-1]) for error in response.json()["detail"]}


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
