"""The spot watcher against a fake IMDSv2 on 127.0.0.1, then the real daemon stopping on a notice.

Nothing here may reach the real metadata address: every watcher is pointed at the fake
(or at a closed loopback port), and the daemon gets ``imds_endpoint`` from its config.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.services.fake_imds import ASG_PATH, SPOT_PATH, TOKEN_PATH, FakeImds
from tests.support.sqs import envelope, queue_counts
from tests.support.wait import wait_until
from vip_worker.services import spot
from vip_worker.services.spot import Notice, SpotWatcher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pinned(imds) -> dict:
    # The environment outranks the config file (AWS_EC2_METADATA_SERVICE_ENDPOINT is an alias
    # of imds_endpoint): pin the fake there too, so no inherited variable can redirect it.
    return {"VIP_WORKER_IMDS_ENDPOINT": imds.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}


def watcher_for(url: str, calls: list, **kwargs) -> SpotWatcher:
    return SpotWatcher(url, 0.05, lambda *args: calls.append(args), **kwargs)


def test_fires_once_on_a_spot_notice_with_its_deadline(imds):
    calls: list = []
    watcher = watcher_for(imds.url, calls)
    assert watcher.poll_once() is None
    assert imds.count("PUT", TOKEN_PATH) == 1 and imds.count("GET", SPOT_PATH) == 1
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=120)
    imds.arm_spot("stop", when)
    notice = watcher.poll_once()
    assert notice == Notice("spot_interruption", "stop", when)
    assert calls == [("spot_interruption", when, "stop")]
    assert watcher.poll_once() == notice and len(calls) == 1
    assert imds.count("GET", SPOT_PATH) == 2  # once fired, it asks no more
    assert imds.count("PUT", TOKEN_PATH) == 1  # the token was reused


def test_fires_on_the_auto_scaling_terminated_state(imds):
    calls: list = []
    watcher = watcher_for(imds.url, calls)
    assert watcher.poll_once() is None  # InService
    imds.set_lifecycle(None)
    assert watcher.poll_once() is None  # 404: not in an Auto Scaling group
    imds.set_lifecycle("Terminated")
    assert watcher.poll_once() == Notice("asg_termination", "terminate", None)
    assert calls == [("asg_termination", None, "terminate")]
    assert imds.count("GET", ASG_PATH) == 3


def test_keeps_polling_while_the_service_is_down_and_logs_once_a_minute(free_port, spot_log):
    clock, calls = Clock(), []
    watcher = watcher_for(f"http://127.0.0.1:{free_port}", calls, clock=clock)
    for _ in range(5):
        assert watcher.poll_once() is None  # connection refused, never raised
    assert len(spot_log.events("spot.imds_unreachable")) == 1
    clock.now += 61
    assert watcher.poll_once() is None
    second = spot_log.events("spot.imds_unreachable")[1]
    assert second.suppressed == 4 and "Connection refused" in second.error
    fake = FakeImds(port=free_port).start()  # the service comes back
    try:
        assert watcher.poll_once() is None
        assert len(spot_log.events("spot.imds_recovered")) == 1
        fake.arm_spot()
        assert watcher.poll_once().reason == "spot_interruption"
        assert len(calls) == 1
    finally:
        fake.stop()


def test_a_service_that_never_answers_times_out(spot_log):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        watcher = watcher_for(f"http://127.0.0.1:{silent.getsockname()[1]}", [],
                              timeout_s=0.2)
        started = time.monotonic()
        assert watcher.poll_once() is None
        assert time.monotonic() - started < 2
    assert "timed out" in spot_log.events("spot.imds_unreachable")[0].error


def test_refreshes_the_token_before_it_expires(imds):
    clock = Clock()
    watcher = watcher_for(imds.url, [], clock=clock, token_ttl_s=100)
    watcher.poll_once()
    clock.now += 50
    watcher.poll_once()
    assert imds.count("PUT", TOKEN_PATH) == 1
    clock.now += 30  # past ttl - ttl/4: renewed before IMDS would expire it
    watcher.poll_once()
    assert imds.count("PUT", TOKEN_PATH) == 2


def test_a_rejected_token_is_replaced_at_once(imds, spot_log):
    watcher = watcher_for(imds.url, [])
    watcher.poll_once()
    imds.revoke_tokens()
    imds.set_lifecycle("Terminated")
    assert watcher.poll_once().reason == "asg_termination"  # 401, new token, asked again
    assert imds.count("PUT", TOKEN_PATH) == 2
    assert not spot_log.events("spot.imds_error")


def test_a_proxy_in_the_environment_is_ignored(imds, monkeypatch, free_port):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port}")  # a closed port
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    imds.set_lifecycle("Terminated")
    assert watcher_for(imds.url, []).poll_once().reason == "asg_termination"


def test_an_unreadable_notice_still_stops_and_a_bad_callback_is_survived(imds, spot_log):
    imds.arm_spot()
    imds.spot_action = "not an object"  # the fake serves json.dumps of it: a JSON string

    def explode(*args):
        raise RuntimeError("callback failed")

    notice = SpotWatcher(imds.url, 0.05, explode).poll_once()
    assert notice == Notice("spot_interruption", "terminate", None)
    assert spot_log.events("spot.notice_failed")


def test_the_thread_fires_once_then_ends(imds):
    fired = threading.Event()
    calls: list = []

    def on_notice(*args):
        calls.append(args)
        fired.set()

    watcher = SpotWatcher(imds.url, 0.05, on_notice)
    watcher.start()
    try:
        wait_until(lambda: imds.count("GET", ASG_PATH) >= 2, 5, message="two idle polls")
        assert not calls
        imds.arm_spot()
        assert fired.wait(5)
        watcher.thread.join(5)
        assert not watcher.thread.is_alive() and len(calls) == 1
    finally:
        watcher.stop()


@pytest.mark.parametrize(("notice", "expected_s"), [
    (Notice("spot_interruption", "terminate", datetime(2026, 1, 1, 0, 2, tzinfo=UTC)), 100),
    (Notice("spot_interruption", "terminate", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)), 0),
    (Notice("spot_interruption", "terminate", None), spot.SPOT_NOTICE_S - spot.SAFETY_MARGIN_S),
    (Notice("asg_termination", "terminate", None), None),  # grace_period_s applies
])
def test_hand_back_delay(notice, expected_s):
    assert spot.hand_back_delay_s(notice, datetime(2026, 1, 1, tzinfo=UTC)) == expected_s


def test_stopper_logs_the_notice_and_asks_the_master_to_stop(spot_log):
    stops: list = []
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    on_notice = spot.stopper(lambda *args: stops.append(args), 60.0, clock=lambda: 500.0,
                             wall=lambda: wall)
    on_notice("spot_interruption", wall + timedelta(seconds=120), "terminate")
    on_notice("asg_termination", None, "terminate")
    assert stops == [("spot_interruption", 600.0), ("asg_termination", None)]
    spot_line, asg_line = spot_log.events("spot.notice")
    assert spot_line.levelname == "WARNING" and spot_line.hand_back_in_s == 100
    assert spot_line.hand_back_at == "2026-01-01T00:01:40+00:00"
    assert spot_line.notice_time == "2026-01-01T00:02:00+00:00"
    assert asg_line.hand_back_in_s is None and asg_line.grace_period_s == 60.0


def test_parse_time():
    assert spot.parse_time("2026-01-15T10:32:00Z") == datetime(2026, 1, 15, 10, 32, tzinfo=UTC)
    assert spot.parse_time("2026-01-15T10:32:00") == datetime(2026, 1, 15, 10, 32, tzinfo=UTC)
    assert spot.parse_time("soon") is None and spot.parse_time(None) is None


# -- the real daemon -----------------------------------------------------------------------


def test_daemon_hands_running_work_back_before_a_spot_deadline(sqs, make_queue, start_daemon,
                                                               imds):
    urls = make_queue("spot", visibility_s=60)
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1,
                                    "visibility_timeout_s": 60}},
                          processes=1, grace_period_s=60, spot_watch=True,
                          imds_endpoint=imds.url, env=pinned(imds), spot_poll_interval_s=0.2)
    daemon.wait_for("poller.ready")
    job = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job, "async_sleep",
                                                                {"seconds": 60}))
    daemon.wait_for("message.started", job_id=job)
    notice_at = datetime.now(UTC) + timedelta(seconds=25)
    armed = time.monotonic()
    imds.arm_spot("terminate", notice_at)

    notice = daemon.wait_for("spot.notice", timeout=10)[0]
    assert notice["level"] == "WARNING" and notice["action"] == "terminate"
    assert notice["reason"] == "spot_interruption" and 3 <= notice["hand_back_in_s"] <= 5
    assert daemon.wait_for("arbiter.stopping")[0]["reason"] == "spot_interruption"
    released = daemon.wait_for("message.released", job_id=job, timeout=12)[0]
    assert released["started"] is True
    assert time.monotonic() - armed < 15  # handed back well before the notice's time
    assert daemon.events("arbiter.handing_back")
    assert daemon.wait_exit(timeout=20) == 0
    assert time.monotonic() - armed < 25
    daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (1, 0), timeout=10,
                      what="the message visible again")


def test_daemon_stops_gracefully_on_an_auto_scaling_termination(sqs, make_queue, start_daemon,
                                                                imds):
    urls = make_queue("asg", visibility_s=60)
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          grace_period_s=30, spot_watch=True, imds_endpoint=imds.url,
                          env=pinned(imds), spot_poll_interval_s=0.2)
    daemon.wait_for("poller.ready")
    job = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job, "async_sleep",
                                                                {"seconds": 2}))
    daemon.wait_for("message.started", job_id=job)
    imds.set_lifecycle("Terminated")
    notice = daemon.wait_for("spot.notice", timeout=10)[0]
    assert notice["reason"] == "asg_termination" and notice["hand_back_in_s"] is None
    daemon.wait_for("message.succeeded", job_id=job)  # no early hand-back: it finishes
    assert daemon.wait_exit(timeout=20) == 0
    assert not daemon.events("message.released") and not daemon.events("arbiter.handing_back")
    assert queue_counts(sqs, urls["url"]) == (0, 0)
