"""A counting HTTP proxy on 127.0.0.1: counts SQS actions on their way to the endpoint.

boto3 speaks SQS's JSON protocol: every request is ``POST /`` with the action in the
``X-Amz-Target`` header (``AmazonSQS.ReceiveMessage``). The proxy reads each request's
head and body (Content-Length) to count it, forwards the bytes unchanged on one upstream
connection per client connection, and copies the responses back as a raw stream
(urllib3 does not pipeline, so request and response alternate on a connection).

Used only where call rates are low (idle, heartbeats): it adds a hop and harness CPU.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from urllib.parse import urlsplit


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.counts: collections.Counter[str] = collections.Counter()
        self.times: list[tuple[float, str]] = []  # (monotonic, action) of every request
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self.serve, daemon=True, name="proxy")
        self.server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def count(self, action: str, since: float = 0.0, until: float = float("inf")) -> int:
        with self.lock:
            return sum(1 for t, a in self.times if a == action and since <= t < until)

    def serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def boot():
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(boot())
        self.loop.run_forever()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(self.pipe(up_reader, writer))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, action = 0, "?"
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"x-amz-target":
                        action = value.strip().decode().rpartition(".")[2]
                body = await reader.readexactly(length) if length else b""
                if action == "?" and b"Action=" in body:  # the query protocol, just in case
                    action = body.split(b"Action=")[1].split(b"&")[0].decode()
                with self.lock:
                    self.counts[action] += 1
                    self.times.append((time.monotonic(), action))
                up_writer.write(head + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                OSError):
            pass
        finally:
            up_writer.close()
            writer.close()
            back.cancel()

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
