"""The health endpoint: ``/live``, ``/ready`` and ``/metrics`` over HTTP, from the master.

A ``ThreadingHTTPServer`` in a daemon thread, bound to ``health_host`` (loopback by
default). It answers from the last ``DaemonStatus`` the master's loop published (frozen,
swapped in one assignment each pass, ``vip_worker.statusfile``): it never reads the
master's own state, which the loop mutates meanwhile. Before the first pass it answers 503.

- ``GET /live``: 200 ``{"ok": true, ...}`` while the master answers at all.
- ``GET /ready``: 200 once every poller served and none is stopping; else 503 and a reason.
- ``GET /metrics``: Prometheus text format 0.0.4.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vip_worker.statusfile import DaemonStatus

log = logging.getLogger("vip_worker.services.health")

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("succeeded", "retried", "dead_lettered", "released", "deferred")

# Returns the last published status, or None before the master's first loop pass.
Published = Callable[[], DaemonStatus | None]
NOT_PUBLISHED = {"ok": False, "ready": False, "reason": "starting: no status published yet"}


# -- what each path answers (pure functions of a snapshot) -----------------------------


def live(snap: dict) -> tuple[int, dict]:
    return 200, {"ok": True, "pid": snap.get("pid"), "uptime_s": snap.get("uptime_s")}


def ready(snap: dict) -> tuple[int, dict]:
    pollers = snap.get("pollers", [])
    serving = sum(1 for p in pollers if p.get("ready") and not p.get("stopping"))
    body = {"ready": False, "pollers_ready": serving, "target": snap.get("target")}
    if snap.get("stopping"):
        body["reason"] = f"stopping ({snap['stopping']})"
    elif not snap.get("ready"):
        body["reason"] = f"starting: {serving}/{snap.get('target')} pollers ready"
    elif not serving:
        # READY was announced once; since then every poller died or is being replaced.
        body["reason"] = "no poller is serving"
    else:
        body["ready"] = True
        return 200, body
    return 503, body


def number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def render_metrics(snap: dict) -> str:
    """The snapshot in Prometheus text format 0.0.4 (one HELP and TYPE per family)."""
    pollers = snap.get("pollers", [])
    totals = snap.get("totals", {})
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {number(value)}" for labels, value in samples)

    family("vip_worker_pollers", "gauge", "Poller processes alive.", [("", len(pollers))])
    family("vip_worker_pollers_target", "gauge", "Poller processes the master keeps alive.",
           [("", snap.get("target", 0))])
    family("vip_worker_pollers_ready", "gauge", "Pollers serving (ready, not stopping).",
           [("", sum(1 for p in pollers if p.get("ready") and not p.get("stopping")))])
    family("vip_worker_in_flight", "gauge", "Messages held by handlers right now.",
           [("", sum(p.get("in_flight", 0) for p in pollers))])
    family("vip_worker_messages_total", "counter",
           "Messages settled since the master started, by outcome.",
           [(f'{{outcome="{o}"}}', totals.get(o, 0)) for o in OUTCOMES])
    family("vip_worker_handler_seconds_total", "counter",
           "Seconds handlers ran, summed over settled runs "
           "(succeeded once deleted, retried, dead-lettered).",
           [("", totals.get("busy_s", 0))])
    family("vip_worker_uptime_seconds", "gauge", "Seconds since the master started.",
           [("", snap.get("uptime_s", 0))])
    family("vip_worker_stopping", "gauge", "1 while the daemon stops, else 0.",
           [("", 1 if snap.get("stopping") else 0)])
    return "\n".join(lines) + "\n"


# -- the server --------------------------------------------------------------------------


class HealthHandler(BaseHTTPRequestHandler):
    server: HealthHttpServer
    server_version = "vip-worker-health"

    def do_GET(self) -> None:  # the name http.server dispatches to
        path = self.path.split("?", 1)[0]
        if path not in ("/live", "/ready", "/metrics"):
            self.answer(404, "application/json", json.dumps({"error": "not found"}))
            return
        status = self.server.published()
        if status is None:
            self.answer(503, "application/json", json.dumps(NOT_PUBLISHED))
            return
        snap = status.as_dict()  # a copy of frozen data: nothing changes under it
        if path == "/metrics":
            self.answer(200, PROMETHEUS_TYPE, render_metrics(snap))
            return
        status, body = live(snap) if path == "/live" else ready(snap)
        self.answer(status, "application/json", json.dumps(body))

    def answer(self, status: int, content_type: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # the base class signature
        pass  # quiet: a probe every few seconds would drown the JSON log


class HealthHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], published: Published) -> None:
        self.published = published
        super().__init__(address, HealthHandler)


class HealthServer:
    """``start()`` binds (raising ``OSError`` if it cannot) and serves from a daemon thread.

    :param host: address to bind, e.g. ``127.0.0.1``.
    :param port: TCP port; 0 picks a free one (``port`` then holds it).
    :param published: returns the master's last published status (``Arbiter.published``).
    """

    def __init__(self, host: str, port: int, published: Published) -> None:
        self.host = host
        self.port = port
        self.published = published
        self.httpd: HealthHttpServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.httpd = HealthHttpServer((self.host, self.port), self.published)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.5}, name="health-server", daemon=True)
        self.thread.start()
        log.info("health.listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        if self.httpd is None:
            return
        self.httpd.shutdown()  # waits for serve_forever to return
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=2)
        self.httpd = None
