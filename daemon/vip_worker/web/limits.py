"""The per-user rate limit on job creation and the request body size limit.

The rate limit is a token bucket per user in this web process's memory: several web
processes (or a restart) each grant a user their own allowance (docs/api.md says so).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """``web_rate_burst`` tokens per user, refilled at ``web_rate_per_minute``.

    Buckets are kept for at most ``max_users`` users: past that, the buckets that have
    refilled (equivalent to no bucket) are dropped, so memory does not grow with every
    user ever seen.
    """

    def __init__(self, per_minute: float, burst: int,
                 clock: Callable[[], float] = time.monotonic, max_users: int = 10000) -> None:
        self.max_users = max_users
        self.rate_per_s = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, user: str) -> float:
        """Spend one token of ``user``: 0.0 when allowed, else the seconds until one."""
        now = self.clock()
        with self._lock:
            if len(self._buckets) >= self.max_users:
                self.prune(now)
            tokens, at = self._buckets.get(user, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[user] = (tokens - 1.0, now)
                return 0.0
            self._buckets[user] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


    def prune(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        self._buckets = {user: (tokens, at) for user, (tokens, at) in self._buckets.items()
                         if tokens + (now - at) * self.rate_per_s < self.burst
                         and now - at < full_after_s}


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` answers 413, whether announced
    by Content-Length or streamed in chunks."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(send)
        if b"transfer-encoding" not in headers and (declared is None or declared.isdigit()):
            # Not chunked: no body (a GET), or exactly the declared length, which the
            # server reads no further than (HTTP/1.1 framing). Nothing to count.
            return await self.app(scope, receive, send)
        seen = 0
        started = refused = False

        async def counted():
            # Over the limit: answer 413 now and tell the app the client left (FastAPI
            # turns any exception raised while reading the body into a 400).
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                if not started and not refused:
                    refused = True
                    await self.refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def tracked(message):
            nonlocal started
            if refused:
                return  # the 413 is sent already
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, tracked)

    async def refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
