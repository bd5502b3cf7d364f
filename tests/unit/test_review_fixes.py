"""Edges found by reading the layout change: a failing close, a slow open, an infinite
delay, JSON nulls in SQS answers, a socket above descriptor 1023."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import socket
import threading
import types

import pytest

from tests.fakes import FakeClock, make_queue_settings
from tests.support.wait import wait_until, wait_until_async
from vip_worker.consumer import Consumer
from vip_worker.inflight import InFlight
from vip_worker.plugins.context import PollerContext
from vip_worker.sqs.boto import failures
from vip_worker.sqs.http11 import Connection
from vip_worker.sqs.wire import WireSqs
from vip_worker.testing import capture_logs


def test_a_close_that_raises_is_logged_and_the_others_still_close():
    context = PollerContext(index=0, settings=None)
    closed = []

    def broken(resource):
        raise RuntimeError("cache close failed")

    context.provide("store", lambda: "STORE", close=closed.append)
    context.provide("cache", lambda: "CACHE", close=broken)
    context.store, context.resource("cache")
    with capture_logs("vip_worker.plugins.context") as records:
        context.close()  # does not raise
    assert closed == ["STORE"]
    (record,) = records.events("resource.close_failed")
    assert record.resource == "cache" and "cache close failed" in record.error


def test_a_resource_replaced_after_it_opened_is_closed_by_the_provider_that_opened_it():
    context = PollerContext(index=0, settings=None)
    closed = []
    context.provide("client", lambda: "first", close=lambda r: closed.append(("old", r)))
    context.resource("client")
    context.provide("client", lambda: "second", close=lambda r: closed.append(("new", r)))
    context.close()
    assert closed == [("old", "first")]


def test_a_slow_open_of_one_resource_does_not_block_another():
    context = PollerContext(index=0, settings=None)
    release = threading.Event()

    def slow_store():
        release.wait(10)
        return "STORE"

    context.provide("store", slow_store)
    context.provide("cache", lambda: "CACHE")
    opening = threading.Thread(target=lambda: context.store)
    opening.start()
    wait_until(lambda: "store" in context._opening, 5, message="the store's open to start")
    answered = []
    reader = threading.Thread(target=lambda: answered.append(context.resource("cache")))
    reader.start()
    reader.join(5)
    release.set()
    opening.join(5)
    assert answered == ["CACHE"]


@pytest.mark.parametrize(("delay_s", "expected"), [
    (math.inf, "cap"), (math.nan, 0), (-math.inf, 0), (0.4, 1), (1e12, "cap")])
def test_a_retry_delay_is_clipped_to_what_sqs_takes(delay_s, expected):
    clock = FakeClock()
    item = InFlight(queue=make_queue_settings("https://q/work"), message_id="m", receipt="r",
                    body="{}", receive_count=1, received_at=clock(), visible_until=30.0)
    cap = int(item.cap_at - clock())
    consumer = types.SimpleNamespace(clock=clock)  # clip needs nothing else
    assert Consumer.clip(consumer, item, delay_s) == (cap if expected == "cap" else expected)


def test_null_failures_in_a_batch_answer_are_none():
    assert failures({"Successful": [{"Id": "0"}], "Failed": None}) == []


def test_json_nulls_in_a_received_message_are_dropped(monkeypatch):
    class NoFallback:
        executor = None

        def close(self):
            pass

    sqs = WireSqs(NoFallback(), "http://127.0.0.1:9", "us-east-1",
                  credentials=lambda: ("AKID", "secret", None))

    async def answer(operation, params, timeout_s=None):
        return {"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "{}",
                              "Attributes": None, "MessageAttributes": None, "MD5OfBody": None}]}

    monkeypatch.setattr(sqs, "request", answer)
    (message,) = asyncio.run(sqs.receive("http://127.0.0.1:9/1/work", 1, 0, 30))
    assert message == {"MessageId": "m", "ReceiptHandle": "r", "Body": "{}"}


def test_an_idle_connection_above_descriptor_1023_is_judged_by_poll_not_select():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1500:
        pytest.skip(f"the descriptor limit ({hard}) is below 1500 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    try:
        sock = socket.socket(fileno=high)

        async def go():
            reader = asyncio.StreamReader()
            writer = type("W", (), {"is_closing": lambda self: False,
                                    "get_extra_info": lambda self, key: sock})()
            connection = Connection(reader, writer)
            idle = connection.usable()
            theirs.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            await wait_until_async(lambda: not connection.usable(), 5,
                                   message="the unsolicited 408 to make it unusable")
            return idle

        assert asyncio.run(go()) is True  # with select this was False: keep-alive lost
    finally:
        sock.detach()
        os.close(high)
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_message_not_parsed_yet_names_its_job_in_log_lines():
    item = InFlight(queue=make_queue_settings("https://q/work"), message_id="m", receipt="r",
                    body='{"jobId": "j-1", "type": "articles"}', receive_count=1,
                    received_at=0.0, visible_until=30.0)
    assert (item.log_fields()["job_id"], item.log_fields()["type"]) == ("j-1", "articles")
    item.body = "not json"
    assert item.log_fields()["job_id"] is None
