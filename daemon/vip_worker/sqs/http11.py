"""A small HTTP/1.1 client on asyncio streams: one origin, keep-alive connections.

Just what ``vip_worker.sqs.wire`` needs: POST a prepared request, read a response
framed by ``Content-Length`` or chunked encoding, keep the connection for the next
call. No redirects, no proxies, no compression (requests ask for ``identity``, as
botocore's do; an encoded answer is refused). Every failure to get a whole response
is a ``ConnectionError`` (an ``OSError``), and a call that runs past its deadline
raises ``TimeoutError``: both are transport errors to the caller. A TLS handshake
that fails is a ``TlsHandshakeError``, so the caller can hand the work to botocore.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

# A response head longer than this is not SQS talking.
MAX_HEAD_BYTES = 64 * 1024
# Interim (1xx) responses skipped before the final one; more is not SQS talking.
MAX_INTERIM_RESPONSES = 8


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """False when the peer has closed, reset or said anything on it while it sat
        idle. An idle HTTP/1.1 connection has nothing to read: a byte waiting (a load
        balancer's unsolicited ``408`` before it closes, stray bytes after the last
        answer, a TLS close) means it is dead, as urllib3 judges it."""
        if (self.writer.is_closing() or self.reader.at_eof()
                or self.reader.exception() is not None or buffered(self.reader)):
            return False
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        try:  # what the loop has not read yet: readable now means data or EOF
            # poll, not select: select refuses a descriptor of 1024 or more.
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            readable = poller.poll(0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Drop it at once: a TLS close could wait to flush a half-sent body."""
        self.writer.transport.abort()


Resolver = Callable[[str, int], Awaitable[list[tuple]]]


class Origin:
    """Keep-alive connections to one ``scheme://host:port``, at most ``max_connections``.

    A connection is held by one request at a time; idle ones are reused newest
    first (the likeliest to be still open), after a check that the peer has not
    closed them and sent nothing. If one still turns out dead (closed or reset
    before the first response byte), the request is sent again at once, once, on a
    new connection (the other idle ones may be as dead); that is not one of the
    caller's retries. A failure after a response byte came back is the caller's to
    count: the server may have acted on the request. A request waits for a free
    connection within its own deadline.

    Connecting tries the resolved addresses in turn, each with its own
    ``connect_timeout_s`` (the TLS handshake included), as urllib3 does.
    """

    def __init__(self, url: str, connect_timeout_s: float = 5.0, max_connections: int = 32,
                 ssl_context: ssl.SSLContext | None = None,
                 resolve: Resolver | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        self.authority = host if default_port else f"{host}:{self.port}"
        self.connect_timeout_s = connect_timeout_s
        self.ssl = (ssl_context or ssl.create_default_context()) if self.scheme == "https" else None
        self.resolve = resolve or self.getaddrinfo
        self.idle: list[Connection] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def getaddrinfo(self, host: str, port: int) -> list[tuple]:
        return await asyncio.get_running_loop().getaddrinfo(host, port,
                                                            type=socket.SOCK_STREAM)

    async def connect(self) -> Connection:
        """A new connection: each resolved address in turn, each with its own
        timeout (a first address that hangs must not spend the others' time;
        uvloop has no ``happy_eyeballs_delay``)."""
        try:
            addresses = await self.resolve(self.host, self.port)
        except OSError as exc:
            raise ConnectionError(f"cannot resolve {self.host}: {exc}") from None
        if not addresses:
            raise ConnectionError(f"{self.host} resolved to no address")
        errors = []
        for family, _, _, _, sockaddr in addresses:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(
                        sockaddr[0], sockaddr[1], family=family, ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                        limit=MAX_HEAD_BYTES)
            except TimeoutError:
                errors.append(f"{sockaddr[0]}: timed out after {self.connect_timeout_s} s")
            except ssl.SSLError as exc:
                if isinstance(exc, ssl.SSLEOFError):  # cut off, not refused
                    errors.append(f"{sockaddr[0]}: {exc}")
                    continue
                raise TlsHandshakeError(f"TLS handshake with {self.authority} failed: "
                                        f"{exc}") from None
            except OSError as exc:
                errors.append(f"{sockaddr[0]}: {exc}")
            else:
                return Connection(reader, writer)
        raise ConnectionError(f"connect to {self.authority} failed: {'; '.join(errors)}")

    async def request(self, data: bytes, timeout_s: float) -> Response:
        """Send ``data`` (a whole request: head and body) and read the response."""
        async with asyncio.timeout(timeout_s), self.slots:
            while self.idle:
                conn = self.idle.pop()
                if not conn.usable():
                    conn.abort()
                    continue
                try:
                    return await self._exchange(conn, data, reused=True)
                except StaleConnection:
                    break  # closed by the server while idle: once more, on a new one
            return await self._exchange(await self.connect(), data, reused=False)

    async def _exchange(self, conn: Connection, data: bytes, reused: bool) -> Response:
        try:
            try:
                conn.writer.write(data)
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise StaleConnection("connection closed by the server") from None
                raise ConnectionError("connection closed before the response head ended") from None
            except (ConnectionResetError, BrokenPipeError, RuntimeError) as exc:
                # uvloop raises RuntimeError writing to a transport the peer has closed.
                # Free to send again only if no byte of an answer came: after one, the
                # server has seen the request.
                if reused and not buffered(conn.reader):
                    raise StaleConnection(f"connection reset: {exc}") from None
                raise ConnectionError(f"connection reset: {exc}") from None
            except asyncio.LimitOverrunError:
                raise ConnectionError("response head too long") from None
            try:
                for _ in range(MAX_INTERIM_RESPONSES):
                    if not is_interim(head):
                        break
                    head = await conn.reader.readuntil(b"\r\n\r\n")  # 100 Continue...
                response, keep = await read_response(conn.reader, head)
            except (ValueError, asyncio.LimitOverrunError) as exc:
                raise ConnectionError(f"malformed HTTP response: {exc}") from None
            except asyncio.IncompleteReadError:
                raise ConnectionError("connection closed before the response ended") from None
        except BaseException:
            # Cancelled, timed out or broken mid-response: the connection's state
            # is unknown, so it is never reused.
            conn.abort()
            raise
        if keep and not buffered(conn.reader):
            self.idle.append(conn)  # at most max_connections exist
        elif keep:
            conn.abort()  # bytes after the answer's end: its framing is not to be trusted
        else:
            conn.close()
        return response

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class StaleConnection(ConnectionError):
    """A kept-alive connection closed before any byte of the response came back."""


class TlsHandshakeError(ConnectionError):
    """The TLS handshake was refused (a certificate not verified, no common cipher)."""


def buffered(reader: asyncio.StreamReader) -> int:
    """How many received bytes wait unread in ``reader`` (asyncio's and uvloop's
    streams both keep them in ``_buffer``; no public API says)."""
    return len(getattr(reader, "_buffer", b""))


def is_interim(head: bytes) -> bool:
    """A ``1xx`` response other than ``101``: the final answer is still to come."""
    status = head[9:12]
    return head.startswith(b"HTTP/1.") and status[:1] == b"1" and status != b"101"


async def read_response(reader: asyncio.StreamReader, head: bytes) -> tuple[Response, bool]:
    """Read the rest of one response after its head; also say whether the
    connection may be reused. Malformed framing raises ``ValueError``."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    transfer = [t.strip() for t in headers.get("transfer-encoding", "").lower().split(",")
                if t.strip()]
    if transfer not in ([], ["chunked"], ["identity"]):
        raise ValueError(f"Transfer-Encoding {headers['transfer-encoding']!r} not asked for")
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ValueError(f"Content-Encoding {encoding!r} not asked for (Accept-Encoding: "
                         "identity)")
    try:
        if status in (204, 304) or 100 <= status < 200:
            body = b""  # no body by definition (SQS sends none of these)
        elif transfer == ["chunked"]:
            body = await read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # framed by the server closing the connection
            return Response(status, headers, await reader.read()), False
    except asyncio.IncompleteReadError:
        raise ConnectionError("connection closed before the response body ended") from None
    keep = (headers.get("connection", "").lower() != "close"
            and status_line[0] != "HTTP/1.0" and not 100 <= status < 200)
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
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("a chunk longer than its size line says")
