"""A small HTTP/1.1 client on asyncio streams: one origin, keep-alive connections.

Just what ``vip_worker.sqs_wire`` needs: POST a prepared request, read a response
framed by ``Content-Length`` or chunked encoding, keep the connection for the next
call. No redirects, no proxies, no compression (SQS uses none of them). Every
failure to get a whole response is a ``ConnectionError`` (an ``OSError``), and a
call that runs past its deadline raises ``TimeoutError``: both are transport
errors to the caller.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

# A response head longer than this is not SQS talking.
MAX_HEAD_BYTES = 64 * 1024


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Origin:
    """Keep-alive connections to one ``scheme://host:port``.

    A connection is held by one request at a time; idle ones are reused newest
    first (the likeliest to be still open). A reused connection that the server
    had closed fails before any response byte: that request is sent again once on
    a new connection, as urllib3 does.
    """

    def __init__(self, url: str, connect_timeout_s: float = 5.0, max_idle: int = 32,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self.ssl = (ssl_context or ssl.create_default_context()) if self.scheme == "https" else None
        self.idle: list[Connection] = []

    async def connect(self) -> Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                        limit=MAX_HEAD_BYTES),
                self.connect_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"connect to {self.authority} timed out "
                                  f"after {self.connect_timeout_s} s") from None
        return Connection(reader, writer)

    async def request(self, data: bytes, timeout_s: float) -> Response:
        """Send ``data`` (a whole request: head and body) and read the response."""
        async with asyncio.timeout(timeout_s):
            while self.idle:
                conn = self.idle.pop()
                try:
                    return await self._exchange(conn, data)
                except StaleConnection:
                    continue  # closed by the server while idle: try the next one
            return await self._exchange(await self.connect(), data, fresh=True)

    async def _exchange(self, conn: Connection, data: bytes, fresh: bool = False) -> Response:
        try:
            conn.writer.write(data)
            response, keep = await read_response(conn.reader, fresh)
        except BaseException:
            # Cancelled, timed out or broken mid-response: the connection's state
            # is unknown, so it is never reused.
            conn.close()
            raise
        if keep and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class StaleConnection(ConnectionError):
    """A kept-alive connection closed before any byte of the response came back."""


async def read_response(reader: asyncio.StreamReader, fresh: bool = True
                        ) -> tuple[Response, bool]:
    """Read one response; also say whether the connection may be reused."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and not fresh:
            raise StaleConnection("connection closed by the server") from None
        raise ConnectionError("connection closed before the response head ended") from None
    except asyncio.LimitOverrunError:
        raise ConnectionError("response head too long") from None
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise ConnectionError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # framed by the server closing the connection
            return Response(status, headers, await reader.read()), False
    except asyncio.IncompleteReadError:
        raise ConnectionError("connection closed before the response body ended") from None
    keep = (headers.get("connection", "").lower() != "close"
            and status_line[0] != "HTTP/1.0")
    return Response(status, headers, body), keep


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
