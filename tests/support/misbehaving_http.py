"""Loopback HTTP servers that misbehave the way real networks do, for the wire client.

Each server listens on 127.0.0.1 and runs a handler per accepted connection in a
thread, on blocking sockets: when ``Peer.send`` returns, the bytes are in the
client's receive queue (loopback), so a test can wait on an event the handler
sets instead of sleeping. The handlers below are the misbehaviours the issue "The
SQS client on real networks" named; ``reply_with`` scripts plain answers.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, sock: socket.socket, server: LoopbackServer) -> None:
        self.sock = sock
        self.server = server
        self.pending = b""

    def read_request(self) -> bytes | None:
        """One whole request (head and ``Content-Length`` body); None at EOF."""
        while b"\r\n\r\n" not in self.pending:
            data = self.recv()
            if not data:
                return None
            self.pending += data
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = self.recv()
            if not data:
                return None
            rest += data
        request, self.pending = head + b"\r\n\r\n" + rest[:length], rest[length:]
        self.server.requests.append(request)
        return request

    def recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_closed(self) -> None:
        """Block until the client closes or resets the connection."""
        while self.recv():
            pass

    def reset(self) -> None:
        """Close with SO_LINGER 0: the client gets an RST, as from a NAT gateway."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class LoopbackServer:
    """A TCP (or TLS) server on 127.0.0.1 calling ``handler(peer)`` per connection.

    ``requests`` holds every whole request read; ``connections`` counts accepts;
    ``said`` is set by handlers when they have done their misdeed.
    """

    def __init__(self, handler: Callable[[Peer], None],
                 tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.said = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.peers: list[socket.socket] = []
        self.closing = False

    def __enter__(self) -> LoopbackServer:
        threading.Thread(target=self.accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self.listener.close()
        for sock in self.peers:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def accept(self) -> None:
        while not self.closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.peers.append(sock)
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()

    def serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                self.peers.append(sock)
            self.handler(Peer(sock, self))


def response(status: int = 200, payload: dict | None = None, headers: str = "",
             reason: str = "X") -> bytes:
    """A whole HTTP/1.1 response with a JSON body and its Content-Length."""
    body = json.dumps({} if payload is None else payload).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


REQUEST_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                       b"Content-Length: 0\r\n\r\n")


def reply_with(*replies: bytes) -> Callable[[Peer], None]:
    """Answers each request, over any connection, with the next reply in turn."""
    queue = list(replies)
    lock = threading.Lock()

    def handler(peer: Peer) -> None:
        while peer.read_request() is not None:
            with lock:
                reply = queue.pop(0)
            peer.send(reply)
    return handler


def answer_then_408(first: bytes) -> Callable[[Peer], None]:
    """The first connection answers once, then, idle, gets a load balancer's unsolicited
    ``408`` (left open, its close still in flight); later connections get ``first``."""
    def handler(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        peer.send(first)
        if peer.server.connections == 1:
            peer.send(REQUEST_TIMEOUT_408)
            peer.server.said.set()
            peer.wait_closed()
            return
        while peer.read_request() is not None:
            peer.send(first)
    return handler


def answer_then_cut(first: bytes, partial: bytes, then: bytes) -> Callable[[Peer], None]:
    """The first connection answers ``first``, then sends ``partial`` of the next
    answer and resets; later connections answer ``then``."""
    def handler(peer: Peer) -> None:
        if peer.server.connections > 1:
            while peer.read_request() is not None:
                peer.send(then)
            return
        if peer.read_request() is None:
            return
        peer.send(first)
        if peer.read_request() is None:
            return
        peer.send(partial)  # Linux hands the client these bytes before the RST's error
        peer.reset()
    return handler


def cut_every_answer(first: bytes, partial: bytes) -> Callable[[Peer], None]:
    """The first request ever is answered ``first``; every later one gets ``partial``
    of an answer and a reset."""
    def handler(peer: Peer) -> None:
        while peer.read_request() is not None:
            if len(peer.server.requests) == 1:
                peer.send(first)
                continue
            peer.send(partial)
            peer.reset()
            return
    return handler


@contextlib.contextmanager
def hanging_address() -> Iterator[tuple[str, int]]:
    """An address whose connects hang: a listener never accepting, its backlog full
    (Linux then drops the SYNs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address)
            fillers.append(sock)
        yield address
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


# -- TLS --------------------------------------------------------------------------

class Authority:
    """A throwaway CA and a certificate for 127.0.0.1 it signed; ``key_ids=False``
    leaves out the Authority and Subject Key Identifiers (as some private CAs do)."""

    def __init__(self, key_ids: bool = True, name: str = "vip-worker test CA") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                False, False), critical=True))
        if key_ids:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        self.cert = builder.sign(self.key, hashes.SHA256())
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(subject).public_key(leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False))
        if key_ids:
            leaf = leaf.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False)
        self.leaf = leaf.sign(self.key, hashes.SHA256())
        self.leaf_key = leaf_key

    def write_bundle(self, path) -> str:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def server_context(self, tmp_path) -> ssl.SSLContext:
        cert = tmp_path / "leaf.pem"
        key = tmp_path / "leaf.key"
        cert.write_bytes(self.leaf.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(self.leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


def answer_all(reply: bytes) -> Callable[[Peer], None]:
    """A capture server: every request, on any connection, is recorded and answered
    ``reply``."""
    def handler(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(reply)
    return handler


def split_request(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """A captured request as (request line, [(name, value)...] in order, body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = []
    for header in header_lines:
        name, _, value = header.partition(":")
        headers.append((name.strip(), value.strip()))
    return line, headers, body
