"""The consumer's flow on a fake SQS: receives bounded by free slots, FIFO groups, draining."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import pytest

from tests.fakes import ConsumerHarness, make_queue_settings, wait_until
from tests.support.sqs import envelope
from vip_worker.errors import PermanentError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


def events(caplog, name):
    return [r for r in caplog.records if r.getMessage() == name]


def visibility_calls(h):
    return [entries for _, entries in h.fake.calls_to("change_visibility_batch")]


# -- receiving -------------------------------------------------------------------------


def test_receive_asks_only_for_free_slots():
    gate = asyncio.Event()
    running, peak = [], []

    async def handler(message, ctx):
        running.append(message.job_id)
        peak.append(len(running))
        await gate.wait()
        running.remove(message.job_id)

    h = ConsumerHarness({"articles": handler}, worker={"concurrency": 3})
    for _ in range(5):
        h.send(envelope())

    async def scenario(consumer):
        await wait_until(lambda: len(running) == 3, what="three handlers")
        # Every slot is taken: the loop waits for one instead of receiving more.
        asked_while_full = [args[1] for args in h.fake.calls_to("receive")]
        gate.set()
        await wait_until(lambda: len(h.fake.deleted(h.url)) == 5 and h.idle())
        return asked_while_full

    assert h.run(scenario) == [3]
    asked = [args[1] for args in h.fake.calls_to("receive")]
    assert all(1 <= n <= 3 for n in asked)
    assert max(peak) == 3
    assert {args[3] for args in h.fake.calls_to("receive")} == {h.queue.visibility_timeout_s}


def test_slots_a_receive_did_not_fill_are_given_back():
    release = threading.Event()
    h = ConsumerHarness({"articles": lambda message, ctx: release.wait(10)},
                        worker={"concurrency": 3})
    h.send(envelope())

    async def scenario(consumer):
        # The handler holds its slot past the fill wait: the next poll goes out without it.
        await wait_until(lambda: len(h.fake.calls_to("receive")) == 2, what="the next poll")
        release.set()
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the message")

    h.run(scenario)
    # 3 asked, 1 came: the next poll asks for the 2 slots the first did not fill.
    assert [args[1] for args in h.fake.calls_to("receive")] == [3, 2]


def test_a_receive_waits_briefly_for_finishing_handlers_to_ask_for_a_full_batch():
    h = ConsumerHarness({"articles": lambda message, ctx: None}, worker={"concurrency": 10})
    for n in range(9):
        h.send(envelope(job_id=f"job-{n}"))

    async def scenario(consumer):
        await wait_until(lambda: len(h.fake.calls_to("receive")) == 2, what="the next poll")

    h.run(scenario)
    # 10 asked, 9 came; the 9 quick handlers finish within the fill wait, so the next
    # poll asks for 10 again instead of 1 (the split that doubles the calls per message).
    assert [args[1] for args in h.fake.calls_to("receive")] == [10, 10]


def test_two_queues_share_the_free_slots():
    h = ConsumerHarness({"articles": lambda message, ctx: None}, worker={"concurrency": 10})
    other_url = h.fake.create_queue("other", visibility_s=60)
    h.settings = dataclasses.replace(
        h.settings, queues=(h.queue, make_queue_settings(other_url, name="other")))

    async def scenario(consumer):
        await wait_until(lambda: len(h.fake.calls_to("receive")) == 2, what="two long polls")

    h.run(scenario)
    assert sorted((args[0], args[1]) for args in h.fake.calls_to("receive")) == [
        (other_url, 5), (h.url, 5)]


def test_a_queue_concurrency_bounds_its_receives():
    h = ConsumerHarness({"articles": lambda message, ctx: None}, concurrency=2)

    async def scenario(consumer):
        await wait_until(lambda: h.fake.calls_to("receive"), what="a long poll")

    h.run(scenario)
    assert h.fake.calls_to("receive")[0][1] == 2


def test_a_failed_receive_is_logged_and_retried(consumer_logs):
    h = ConsumerHarness({"articles": lambda message, ctx: None})
    h.send(envelope())
    h.fake.fail_next("receive", "AWS.SimpleQueueService.OverLimit")

    async def scenario(consumer):
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the retry")

    h.run(scenario)
    (record,) = events(consumer_logs, "receive.failed")
    assert record.error_code == "AWS.SimpleQueueService.OverLimit"
    assert len(h.fake.calls_to("receive")) >= 2


# -- FIFO ------------------------------------------------------------------------------


def test_fifo_runs_a_group_in_order_one_at_a_time():
    trace = []

    async def handler(message, ctx):
        trace.append(("start", message.job_id))
        for _ in range(3):
            await asyncio.sleep(0)
        trace.append(("end", message.job_id))

    h = ConsumerHarness({"articles": handler}, fifo=True)
    for job in ("j1", "j2", "j3"):
        h.send(envelope(job_id=job), group_id="g")

    async def scenario(consumer):
        await wait_until(lambda: len(h.fake.deleted(h.url)) == 3 and h.idle())

    h.run(scenario)
    assert trace == [(edge, job) for job in ("j1", "j2", "j3") for edge in ("start", "end")]


def test_fifo_failure_hands_back_the_rest_of_the_group_unrun():
    ran = []

    def handler(message, ctx):
        ran.append(message.job_id)
        if message.job_id == "j1":
            raise ValueError("try again")

    h = ConsumerHarness({"articles": handler}, fifo=True)
    first = h.send(envelope(job_id="j1"), group_id="g")
    second = h.send(envelope(job_id="j2"), group_id="g")

    async def scenario(consumer):
        await wait_until(lambda: len(visibility_calls(h)) == 2 and h.idle())

    h.run(scenario)
    assert ran == ["j1"]
    assert visibility_calls(h) == [[("0", f"{first}#1", 5)], [("0", f"{second}#1", 0)]]
    # SQS keeps the group behind its failed head: nothing until j1 comes back.
    assert h.fake.take(h.url, 10, 60) == []
    h.clock.advance(5)
    assert [m["MessageId"] for m in h.fake.take(h.url, 10, 60)] == [first, second]


def test_fifo_dead_letters_into_the_fifo_dlq_and_the_group_goes_on():
    ran = []

    def handler(message, ctx):
        ran.append(message.job_id)
        if message.job_id == "j1":
            raise PermanentError("bad topic")

    h = ConsumerHarness({"articles": handler}, fifo=True)
    first = h.send(envelope(job_id="j1"), group_id="g")
    h.send(envelope(job_id="j2"), group_id="g")

    async def scenario(consumer):
        await wait_until(lambda: len(h.fake.deleted(h.url)) == 2 and h.idle())

    h.run(scenario)
    assert ran == ["j1", "j2"]
    (dead,) = h.fake.messages(h.dlq_url)
    assert dead.group_id == "g"
    assert h.fake.calls_to("send")[-1][4] == first  # deduplicated by the source message id


# -- draining --------------------------------------------------------------------------


def test_drain_hands_back_unstarted_messages_and_lets_running_ones_finish(consumer_logs):
    gate = threading.Event()
    started = []

    def handler(message, ctx):
        started.append(message.job_id)
        assert gate.wait(10)

    h = ConsumerHarness({"slow": handler}, worker={"type_limits": {"slow": 1}})
    ids = [h.send(envelope(type_="slow", job_id=f"j{n}")) for n in range(3)]

    async def scenario(consumer):
        try:
            await wait_until(lambda: started and len(consumer.held) == 3, what="one running")
            drain = asyncio.create_task(consumer.drain(grace_s=10, wait_for_polls=False))
            await wait_until(lambda: len(h.fake.visible(h.url)) == 2, what="the hand-back")
            assert not drain.done()  # the running handler still has its grace period
        finally:
            gate.set()
        await drain

    h.run(scenario)
    assert started == ["j0"]
    assert [m.message_id for m in h.fake.deleted(h.url)] == [ids[0]]
    assert [m.message_id for m in h.fake.visible(h.url)] == ids[1:]
    assert_only_handed_back(h)
    released = events(consumer_logs, "message.released")
    assert {r.message_id for r in released} == set(ids[1:])
    assert {(r.reason, r.started) for r in released} == {("shutdown", False)}


def assert_only_handed_back(h):
    """Every visibility change was a hand-back (0).

    The poller's own long poll is still out while it hands messages back, so it
    may receive them once more; it then hands them back again at once.
    """
    entries = [e for call in visibility_calls(h) for e in call]
    assert entries and {e[2] for e in entries} == {0}


def test_drain_hands_back_a_handler_still_running_after_the_grace(consumer_logs):
    cancelled = []

    async def handler(message, ctx):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(message.job_id)
            raise

    h = ConsumerHarness({"articles": handler})
    message_id = h.send(envelope(job_id="long"))

    async def scenario(consumer):
        await wait_until(lambda: any(i.started for i in consumer.held.values()))
        await consumer.drain(grace_s=0.05, wait_for_polls=False)
        return consumer

    consumer = h.run(scenario)
    assert [m.message_id for m in h.fake.visible(h.url)] == [message_id]
    assert visibility_calls(h)[0] == [("0", f"{message_id}#1", 0)]
    assert_only_handed_back(h)
    assert h.fake.calls_to("delete_batch") == []
    assert cancelled == ["long"]
    assert consumer.tasks == {}
    first = events(consumer_logs, "message.released")[0]
    assert (first.reason, first.started) == ("grace_period_over", True)


def test_messages_from_a_poll_cut_by_the_stop_are_handed_back():
    ran = []
    h = ConsumerHarness({"articles": lambda message, ctx: ran.append(message)})

    async def scenario(consumer):
        await wait_until(lambda: consumer.polling == 1, what="a long poll")
        drain = asyncio.create_task(consumer.drain(grace_s=0, wait_for_polls=True))
        await wait_until(lambda: consumer.stopping)
        message_id = h.send(envelope())  # arrives while the long poll is still out
        await drain
        return message_id

    message_id = h.run(scenario)
    assert ran == []
    (message,) = h.fake.visible(h.url)
    assert (message.message_id, message.receive_count) == (message_id, 1)
    assert visibility_calls(h) == [[("0", f"{message_id}#1", 0)]]


# -- the heartbeat and a decided fate ------------------------------------------------------


def test_the_heartbeat_leaves_alone_a_message_whose_retry_is_pending():
    async def handler(message, ctx):
        h.clock.advance(30)  # the message is now due for a heartbeat
        raise ValueError("flaky")

    h = ConsumerHarness({"articles": handler})
    message_id = h.send(envelope())

    async def scenario(consumer):
        batcher = consumer.visibility["work"]
        batcher.window_s = 3600  # hold the retry's visibility change until we flush it
        await wait_until(lambda: any(i.settled for i in consumer.held.values()))
        await consumer.heartbeat.beat(h.clock.now())
        batcher.flush()
        await wait_until(h.idle)

    h.run(scenario)
    assert visibility_calls(h) == [[("0", f"{message_id}#1", 5)]]
