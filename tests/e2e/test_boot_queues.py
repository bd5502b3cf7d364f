"""``vip-worker run`` asks SQS about its queues before it starts pollers (and again on
SIGHUP): a queue that does not exist is a configuration error (exit 78, named on stderr
and in ``boot.failed``); an SQS that cannot be reached is not (the daemon starts)."""

from __future__ import annotations

import signal
import socket
import uuid

import pytest

pytestmark = pytest.mark.e2e


def missing_queue_url(sqs_endpoint: str) -> str:
    return f"{sqs_endpoint}/123456789012/absent-{uuid.uuid4().hex[:8]}"


def test_a_queue_that_does_not_exist_stops_the_boot_with_exit_78(sqs_endpoint, start_daemon):
    url = missing_queue_url(sqs_endpoint)
    daemon = start_daemon({"work": {"url": url, "wait_time_s": 1}})
    assert daemon.wait_exit(timeout=15) == 78
    err = daemon.err_path.read_text()
    assert "queue 'work' does not exist" in err and url in err
    (failed,) = daemon.events("boot.failed")
    assert "queue 'work' does not exist" in failed["error"] and url in failed["error"]
    assert not daemon.events("poller.spawned")


def test_an_unreachable_sqs_does_not_stop_the_boot(make_queue, start_daemon):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    url = f"{closed}/123456789012/work"
    daemon = start_daemon({"work": {"url": url, "wait_time_s": 1}},
                          env={"AWS_ENDPOINT_URL_SQS": closed})
    (unchecked,) = daemon.wait_for("queue.unchecked")
    assert unchecked["queue"] == "work" and unchecked["url"] == url
    assert unchecked["level"] == "WARNING"
    daemon.wait_for("poller.spawned")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=30) == 0
    assert not daemon.events("boot.failed")


def test_a_reload_to_a_queue_that_does_not_exist_is_refused(sqs_endpoint, make_queue,
                                                            start_daemon):
    urls = make_queue("stays", dlq=False)
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1)
    pid = daemon.wait_for("poller.ready")[0]["pid"]
    config = daemon.log_path.parent / "vip-worker.toml"
    url = missing_queue_url(sqs_endpoint)
    config.write_text(config.read_text().replace(urls["url"], url))
    daemon.send(signal.SIGHUP)
    failed = daemon.wait_for("arbiter.reload_failed")[0]
    assert "queue 'work' does not exist" in failed["error"] and url in failed["error"]
    assert daemon.children() == [pid]
    assert not daemon.events("arbiter.reloading")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=30) == 0
