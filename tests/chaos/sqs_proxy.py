"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an SQS endpoint (moto).

boto3 speaks SQS's JSON protocol: every call is ``POST /`` with
``X-Amz-Target: AmazonSQS.<Action>``, so the proxy knows each call's action and
can aim its faults at some actions only. Per call it draws at most one fault,
each with its own share:

=================  ===============================================================
``error500``       HTTP 500 InternalError, the call never reaches the endpoint
``throttle``       HTTP 400 ThrottlingException (``x-amzn-query-error: Throttling;Sender``)
``drop``           the connection is closed without an answer, call not forwarded
``delay``          the call is forwarded after a pause of up to ``delay_max_s``
``error500_after`` forwarded (it happened), then the answer is replaced by a 500
``drop_after``     forwarded (it happened), then the connection is closed unanswered
=================  ===============================================================

The ``_after`` faults are the hard case for a client: a failed SendMessage or
DeleteMessageBatch may have taken effect. ``enforce_size_limit`` adds real SQS's
size rule, which moto does not apply: body plus every attribute's name, type and
value, in UTF-8 bytes, at most 1 MiB (moto counts body characters only).

``outage(seconds)`` is a brownout: for that long every call (of the plan's actions)
fails with one of the failing faults, long enough to exhaust botocore's own retries
(3 attempts within about a second), so the daemon's error paths run, not only boto's.

Counters: ``counts()`` -> ``{fault: {action: n}}``; ``calls()`` -> ``{action: n}``.
``enabled`` switches every fault off (calls are still forwarded and counted).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("error500", "throttle", "drop", "delay", "error500_after", "drop_after")
OUTAGE_FAULTS = ("error500", "throttle", "drop", "error500_after", "drop_after")
SQS_MAX_BYTES = 1024 * 1024
FORWARD_TIMEOUT_S = 60.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
              "proxy-connection", "upgrade", "te", "trailer"}


def message_size(body: str, attributes: dict | None) -> int:
    """SQS's size of a message: UTF-8 bytes of the body and of each attribute's
    name, data type and value (binary values count their decoded bytes)."""
    size = len(body.encode("utf-8", "surrogatepass"))
    for name, value in (attributes or {}).items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        if "StringValue" in value:
            size += len(str(value["StringValue"]).encode("utf-8", "surrogatepass"))
        elif isinstance(value.get("BinaryValue"), (bytes, bytearray)):
            size += len(value["BinaryValue"])
        elif "BinaryValue" in value:
            size += len(value["BinaryValue"]) * 3 // 4  # base64 in the JSON request
    return size


class FaultPlan:
    """Shares of each fault and the actions they may hit; thread-safe draws.

    :param shares: ``{fault: share}``, shares summing to at most 1.
    :param actions: the actions faults may hit (``None``: every action).
    :param delay_max_s: longest pause of a ``delay`` fault.
    """

    def __init__(self, shares: dict[str, float] | None = None, actions: set[str] | None = None,
                 delay_max_s: float = 1.5, seed: int | None = None) -> None:
        shares = dict(shares or {})
        unknown = set(shares) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if sum(shares.values()) > 1.0:
            raise ValueError("fault shares add up to more than 1")
        self.shares = shares
        self.actions = set(actions) if actions is not None else None
        self.delay_max_s = delay_max_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.outage_until = 0.0  # monotonic

    def draw(self, action: str) -> str | None:
        if self.actions is not None and action not in self.actions:
            return None
        with self.lock:
            if time.monotonic() < self.outage_until:
                return self.rng.choice(OUTAGE_FAULTS)
            roll = self.rng.random()
        for fault, share in self.shares.items():
            if roll < share:
                return fault
            roll -= share
        return None

    def outage(self, seconds: float) -> None:
        """Fail every call for ``seconds`` from now (a brownout)."""
        with self.lock:
            self.outage_until = time.monotonic() + seconds

    def pause_s(self) -> float:
        with self.lock:
            return self.rng.random() * self.delay_max_s


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection does not hold a thread for ever
    proxy: SqsFaultProxy

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.relay()

    def do_GET(self) -> None:
        self.relay()

    def relay(self) -> None:
        proxy = self.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        target = self.headers.get("X-Amz-Target", "")
        action = target.rpartition(".")[2] if target else "(query)"
        proxy.count_call(action)
        if proxy.enforce_size_limit and action in ("SendMessage", "SendMessageBatch"):
            problem = proxy.size_problem(action, body)
            if problem:
                proxy.count_fault("size_refused", action)
                self.answer(400, {"__type": "com.amazonaws.sqs#InvalidParameterValue",
                                  "message": problem}, "InvalidParameterValue;Sender")
                return
        fault = proxy.plan.draw(action) if proxy.enabled else None
        if fault:
            proxy.count_fault(fault, action)
        if fault == "error500":
            self.answer(500, {"__type": "InternalError",
                              "message": "We encountered an internal error (injected)"},
                        "InternalError;Receiver")
            return
        if fault == "throttle":
            self.answer(400, {"__type": "ThrottlingException",
                              "message": "Rate exceeded (injected)"}, "Throttling;Sender")
            return
        if fault == "drop":
            self.drop()
            return
        if fault == "delay":
            time.sleep(proxy.plan.pause_s())  # the injected fault: a slow answer
        try:
            status, headers, data = proxy.forward(self.command, self.path, self.headers, body)
        except (OSError, http.client.HTTPException) as exc:
            proxy.count_fault("upstream_error", action)
            self.answer(502, {"__type": "InternalError", "message": f"upstream: {exc}"},
                        "InternalError;Receiver")
            return
        if fault == "error500_after":
            self.answer(500, {"__type": "InternalError",
                              "message": "We encountered an internal error (injected, "
                                         "after the call took effect)"},
                        "InternalError;Receiver")
            return
        if fault == "drop_after":
            self.drop()
            return
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def answer(self, status: int, doc: dict, query_error: str) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amzn-query-error", query_error)
        self.send_header("x-amzn-RequestId", "chaos-proxy")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        """Close with an RST, unanswered: the client sees a reset connection."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.dropping.add(self.connection)


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler)
        self.dropping: set[socket.socket] = set()

    def shutdown_request(self, request) -> None:
        if request in self.dropping:
            self.dropping.discard(request)
            self.close_request(request)  # no FIN first: SO_LINGER 0 turns the close into RST
        else:
            super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away mid-answer is not news here


class SqsFaultProxy:
    """``start()``, ``url``, ``stop()``; ``plan``, ``enabled`` and the counters.

    :param upstream: the real endpoint, e.g. ``http://127.0.0.1:5000`` (moto).
    :param plan: the faults to inject (default: none).
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None,
                 enforce_size_limit: bool = False) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the proxy only forwards to a loopback endpoint")
        self.upstream = (parts.hostname, parts.port or 80)
        self.plan = plan or FaultPlan()
        self.enabled = True
        self.enforce_size_limit = enforce_size_limit
        self._lock = threading.Lock()
        self._faults: Counter[tuple[str, str]] = Counter()
        self._calls: Counter[str] = Counter()
        self._server: ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> SqsFaultProxy:
        handler = type("BoundProxyHandler", (ProxyHandler,), {"proxy": self})
        self._server = ProxyServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="sqs-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> SqsFaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def forward(self, method: str, path: str, headers, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=FORWARD_TIMEOUT_S)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def size_problem(self, action: str, body: bytes) -> str | None:
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        entries = doc.get("Entries", []) if action == "SendMessageBatch" else [doc]
        total = 0
        for entry in entries:
            size = message_size(entry.get("MessageBody", ""), entry.get("MessageAttributes"))
            if size > SQS_MAX_BYTES:
                return ("One or more parameters are invalid. Reason: Message must be shorter "
                        f"than {SQS_MAX_BYTES} bytes.")
            total += size
        if total > SQS_MAX_BYTES:
            return f"Batch requests cannot be longer than {SQS_MAX_BYTES} bytes."
        return None

    # -- counters ---------------------------------------------------------------

    def count_call(self, action: str) -> None:
        with self._lock:
            self._calls[action] += 1

    def count_fault(self, fault: str, action: str) -> None:
        with self._lock:
            self._faults[(fault, action)] += 1

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{fault: {action: n}}`` of the faults injected so far."""
        result: dict[str, dict[str, int]] = {}
        with self._lock:
            for (fault, action), n in sorted(self._faults.items()):
                result.setdefault(fault, {})[action] = n
        return result

    def totals(self) -> dict[str, int]:
        """``{fault: n}`` over every action."""
        return {fault: sum(by_action.values()) for fault, by_action in self.counts().items()}
