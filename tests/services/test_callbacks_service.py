"""``Callbacks`` on an in-memory store and a loopback receiver: an attempt's record, the
backoff, giving up, the check of every resolved address at send time, the sweep's hold."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.callback_receiver import CallbackReceiver
from vip_worker import config
from vip_worker.services import callbacks as callbacks_module
from vip_worker.services.callbacks import Callbacks
from vip_worker.testing import MemoryStore

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
JOB = "job-1"


@pytest.fixture
def receiver():
    r = CallbackReceiver()
    yield r
    r.stop()


@pytest.fixture
def store():
    s = MemoryStore()
    s.create_job(JOB, "u1", "articles", {}, T0)
    s.claim(JOB, user_id="u1", type="articles", params={}, message_id="m1", lease_s=60,
            now=T0, delivery="d1")
    s.complete(JOB, T0, delivery="d1")
    yield s
    s.close()


class Clock:
    def __init__(self):
        self.now = T0 + timedelta(seconds=1)

    def __call__(self):
        return self.now


def make(tmp_path, store, clock, lookup=None, **values):
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False).with_values(**{
        "callback_secret": "s", "callback_allowed_hosts": ["127.0.0.1"],
        "callback_timeout_s": 2.0, **values})
    kwargs = {"lookup": lookup} if lookup else {}
    return Callbacks(settings, lambda: store, clock=clock, **kwargs)


def test_failed_attempts_back_off_then_give_up_and_the_job_is_untouched(
        tmp_path, store, receiver, caplog):
    caplog.set_level(logging.INFO, logger="vip_worker")
    receiver.answers = [500, 503, 500]
    clock = Clock()
    callbacks = make(tmp_path, store, clock, callback_max_attempts=3)
    store.add_callback(JOB, receiver.url, clock.now)
    waits = []
    for _ in range(3):
        callbacks.attempt(JOB)
        entry = store.get_job(JOB)["callback"]
        if entry["nextAt"]:
            waits.append((entry["nextAt"] - clock.now).total_seconds())
            clock.now = entry["nextAt"]
    callbacks.close()
    assert waits == [1.0, 2.0]
    assert entry["state"] == "gave_up" and entry["attempts"] == 3
    assert entry["lastError"] == "HTTP 500"
    assert store.get_job(JOB)["status"] == "completed"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("callback.")] \
        == ["callback.failed", "callback.failed", "callback.gave_up"]


def test_a_name_resolving_to_an_internal_address_is_refused_at_send_time(
        tmp_path, store, receiver, monkeypatch):
    def never(*args, **kwargs):  # the metadata address must never see a connection attempt
        raise AssertionError("a request was sent to an address the check should refuse")

    monkeypatch.setattr(callbacks_module.PinnedAdapter, "send", never)
    clock = Clock()
    callbacks = make(tmp_path, store, clock, lookup=lambda host, port: ["169.254.169.254"],
                     callback_allowed_hosts=[])
    store.add_callback(JOB, "http://hooks.example.com/x", clock.now)
    callbacks.attempt(JOB)
    callbacks.close()
    entry = store.get_job(JOB)["callback"]
    assert entry["state"] == "gave_up" and "169.254.169.254" in entry["lastError"]
    assert receiver.requests == []


def test_a_name_whose_addresses_an_allowed_cidr_covers_is_called(tmp_path, store, receiver):
    # receiver.test is in no DNS: the POST reaches the receiver only because it goes to
    # the address the check approved (pinned), with the URL's host in the Host header.
    clock = Clock()
    callbacks = make(tmp_path, store, clock, lookup=lambda host, port: ["127.0.0.1"],
                     callback_allowed_hosts=["127.0.0.0/8"])
    url = receiver.url.replace("127.0.0.1", "receiver.test")
    store.add_callback(JOB, url, clock.now)
    callbacks.attempt(JOB)
    callbacks.close()
    assert store.get_job(JOB)["callback"]["state"] == "delivered"
    [got] = receiver.requests
    assert got.headers["Host"] == url.split("/")[2]


def test_the_sweep_takes_due_entries_once(tmp_path, store, receiver):
    clock = Clock()
    one, other = make(tmp_path, store, clock), make(tmp_path, store, clock)
    store.add_callback(JOB, receiver.url, clock.now)
    assert one.take_due() == [JOB]
    assert other.take_due() == []  # held by the first sweeper
    clock.now += one.hold
    assert other.take_due() == [JOB]  # the first one died: the hold ran out
    one.close()
    other.close()


def test_record_then_one_attempt_in_the_background(tmp_path, store, receiver):
    clock = Clock()
    callbacks = make(tmp_path, store, clock)

    async def scenario():
        await callbacks.record(JOB, {"callbackUrl": receiver.url})
        await asyncio.gather(*callbacks.tasks)

    asyncio.run(scenario())
    callbacks.close()
    assert store.get_job(JOB)["callback"]["state"] == "delivered"
    assert [r.headers["X-VIP-Delivery"] for r in receiver.requests] == [f"{JOB}:completed"]
