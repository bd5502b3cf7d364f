"""The health endpoint: rendering from a fake snapshot, then the real daemon's /live, /ready,
/metrics. Only 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import urllib.error
import urllib.request
import uuid

import pytest

from tests.fakes import FakeClock, make_settings
from tests.support.sqs import envelope
from vip_worker import exitcodes, liveness
from vip_worker.arbiter import Arbiter, PollerHandle
from vip_worker.services.health import HealthServer, ready, render_metrics
from vip_worker.statusfile import DaemonStatus
from vip_worker.systemd import Notifier

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[a-z_]+"\})? -?[0-9.e+]+$')


def fake_snapshot(**changes) -> dict:
    snap = {
        "pid": 42, "uptime_s": 12.5, "target": 2, "generation": 0, "stopping": None,
        "ready": True,
        "pollers": [{"index": 0, "ready": True, "stopping": False, "in_flight": 3},
                    {"index": 1, "ready": True, "stopping": False, "in_flight": 1}],
        "totals": {"handled": 9, "succeeded": 5, "retried": 2, "dead_lettered": 1,
                   "released": 1, "busy_s": 12.25},
    }
    snap.update(changes)
    return snap


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_render_in_prometheus_text_format():
    text = render_metrics(fake_snapshot())
    assert text.endswith("\n")
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP [a-z_]+ .+|TYPE [a-z_]+ (gauge|counter))$", line), line
        else:
            assert SAMPLE.match(line), line
            name, value = line.rsplit(" ", 1)
            values[name] = value
    assert values["vip_worker_pollers"] == "2" and values["vip_worker_pollers_ready"] == "2"
    assert values["vip_worker_in_flight"] == "4"
    assert values['vip_worker_messages_total{outcome="succeeded"}'] == "5"
    assert values['vip_worker_messages_total{outcome="dead_lettered"}'] == "1"
    assert values["vip_worker_handler_seconds_total"] == "12.25"
    assert values["vip_worker_uptime_seconds"] == "12.5"
    assert "# TYPE vip_worker_messages_total counter" in text
    assert text.count("# TYPE vip_worker_messages_total") == 1  # one family, four samples


@pytest.mark.parametrize(("changes", "status", "reason"), [
    ({}, 200, None),
    ({"stopping": "graceful"}, 503, "stopping (graceful)"),
    ({"ready": False, "pollers": []}, 503, "starting: 0/2 pollers ready"),
    ({"pollers": [{"ready": True, "stopping": True, "in_flight": 0}]}, 503,
     "no poller is serving"),
])
def test_ready_answers(changes, status, reason):
    code, body = ready(fake_snapshot(**changes))
    assert code == status and body.get("reason") == reason


def published(**changes) -> DaemonStatus:
    """``fake_snapshot`` as the master publishes it (frozen)."""
    doc = {"written_at": 0.0, "rate_per_min": None, "rate_window_s": 0, "queues": ["work"],
           **fake_snapshot(**changes)}
    return DaemonStatus.build(**doc)


def test_server_paths_and_the_time_before_the_first_publication():
    state = {"status": None}
    server = HealthServer("127.0.0.1", 0, lambda: state["status"])
    server.start()
    try:
        for path in ("/live", "/ready", "/metrics"):
            code, body = get(server.port, path)
            assert code == 503 and json.loads(body)["reason"] == (
                "starting: no status published yet")
        state["status"] = published()
        assert get(server.port, "/live") == (200, json.dumps(
            {"ok": True, "pid": 42, "uptime_s": 12.5}))
        assert get(server.port, "/ready")[0] == 200
        assert "vip_worker_pollers 2" in get(server.port, "/metrics")[1]
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


class Untouchable(dict):
    """The master's pollers dict, mid-change: any read from another thread fails."""

    def values(self):
        raise RuntimeError("dictionary changed size during iteration")

    __iter__ = items = values


def test_health_answers_from_the_published_status_not_the_masters_state():
    # Before, the endpoint called the arbiter's snapshot() from its own thread and
    # answered 503 whenever it raced the loop changing the pollers dict.
    master = Arbiter(make_settings(), poller_main=lambda *a: 0, reload=lambda: None,
                     clock=FakeClock(), notifier=Notifier(environ={}))
    master.target = 1
    shm = [0.0] * liveness.SIZE
    shm[liveness.READY] = 1.0
    master.pollers = {7: PollerHandle(index=0, pid=7, generation=0, shm=shm,
                                      spawned_at=master.clock())}
    master.report()  # one loop pass publishes
    status = master.published
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.target = 5
    with pytest.raises(TypeError):
        status.pollers[0]["ready"] = False  # read-only views, too
    master.pollers = Untouchable(master.pollers)
    server = HealthServer("127.0.0.1", 0, lambda: master.published)
    server.start()
    try:
        code, body = get(server.port, "/ready")
        assert (code, json.loads(body)["pollers_ready"]) == (200, 1)
        assert "vip_worker_pollers 1" in get(server.port, "/metrics")[1]
    finally:
        server.stop()


# -- the real daemon -------------------------------------------------------------------------


def test_daemon_serves_live_ready_and_metrics(sqs, make_queue, start_daemon, free_port):
    urls = make_queue("health")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          health_port=free_port)
    assert daemon.wait_for("health.listening")[0]["port"] == free_port
    assert get(free_port, "/live")[0] == 200
    daemon.wait_for("poller.ready")
    daemon.wait_until(lambda: get(free_port, "/ready")[0] == 200, what="/ready 200")
    assert get(free_port, "/nope")[0] == 404
    job = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job, "sleep", {"seconds": 0}))
    daemon.wait_for("message.succeeded", job_id=job)
    # The poller publishes its counters each second; the master sums them.
    daemon.wait_until(lambda: 'vip_worker_messages_total{outcome="succeeded"} 1\n'
                      in get(free_port, "/metrics")[1], timeout=10, what="the success counted")
    text = get(free_port, "/metrics")[1]
    for name in ("vip_worker_pollers 1", "vip_worker_pollers_ready 1", "vip_worker_in_flight 0",
                 "vip_worker_handler_seconds_total", "vip_worker_uptime_seconds"):
        assert name in text


def test_daemon_fails_at_boot_when_the_health_port_is_taken(sqs, make_queue, start_daemon):
    urls = make_queue("busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                              health_port=port)
        assert daemon.wait_exit(timeout=20) == exitcodes.CONFIG
    failed = daemon.wait_for("health.bind_failed", master_may_exit=True)[0]
    assert failed["level"] == "CRITICAL" and failed["port"] == port
    assert not daemon.events("poller.spawned")
