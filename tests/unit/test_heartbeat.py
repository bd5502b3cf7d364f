"""The heartbeat: which messages are due, how far they are extended, and the calls it makes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.fakes import AsyncFakeSqs, FakeClock, FakeSqs, make_queue_settings
from vip_worker import heartbeat as hb
from vip_worker.inflight import CAP_MARGIN_S, InFlight
from vip_worker.sqs.limits import MAX_VISIBILITY_S

NOW = 1000.0
A = make_queue_settings("https://sqs.example/q/a", name="a", visibility_timeout_s=60)
B = make_queue_settings("https://sqs.example/q/b", name="b", visibility_timeout_s=600)


def held(left_s: float, queue=A, received_at: float = NOW - 10, **flags) -> InFlight:
    """A message whose visibility runs out ``left_s`` after NOW."""
    return InFlight(queue=queue, message_id=f"m{left_s}", receipt=f"r{left_s}", body="{}",
                    receive_count=1, received_at=received_at, visible_until=NOW + left_s,
                    **flags)


# -- due / extension / next_wake (pure) ---------------------------------------------


def test_a_message_is_due_at_half_its_visibility():
    assert hb.due([held(31)], NOW) == {}
    item = held(30)
    assert hb.due([item], NOW) == {"a": [item]}


def test_due_takes_along_messages_due_within_the_next_quarter():
    due, along, later = held(30), held(45), held(46)
    assert hb.due([due, along, later], NOW) == {"a": [due, along]}


def test_nothing_rides_along_unless_one_is_due():
    assert hb.due([held(40), held(45)], NOW) == {}


def test_queues_are_grouped_separately_by_their_own_timeout():
    a_due, b_due, b_not = held(30), held(300, queue=B), held(451, queue=B)
    a_not = held(59)
    assert hb.due([a_due, a_not, b_due, b_not], NOW) == {"a": [a_due], "b": [b_due]}
    assert hb.due([a_not, b_due], NOW) == {"b": [b_due]}


def test_lost_and_capped_items_are_skipped():
    assert hb.due([held(1, lost=True), held(2, capped=True)], NOW) == {}
    assert hb.next_wake([held(1, lost=True), held(2, capped=True)], NOW) is None


def test_extension_is_a_full_timeout_until_the_12_hour_cap_clips_it():
    assert hb.extension(held(30), NOW) == 60
    cap_at = NOW - 10 + MAX_VISIBILITY_S - CAP_MARGIN_S
    near_cap = held(30, received_at=NOW - 10)
    assert hb.extension(near_cap, cap_at - 20) == 20
    assert hb.extension(near_cap, cap_at) == 0
    # Nothing to add when the clipped deadline is not later than the current one.
    late = held(30)
    late.visible_until = cap_at
    assert hb.extension(late, cap_at - 20) == 0


def test_next_wake_is_when_the_first_becomes_due():
    assert hb.next_wake([], NOW) is None
    assert hb.next_wake([held(50), held(40)], NOW) == 10
    assert hb.next_wake([held(50, queue=B)], NOW) == hb.MIN_SLEEP_S  # already past due
    assert hb.next_wake([held(40), held(10, lost=True)], NOW) == 10


# -- beat() against the fake SQS ---------------------------------------------------------


def setup(count: int, visibility_s: int = 60):
    clock = FakeClock(NOW)
    fake = FakeSqs(clock)
    url = fake.create_queue("work", visibility_s=visibility_s)
    queue = make_queue_settings(url, visibility_timeout_s=visibility_s)
    for n in range(count):
        fake.send(url, f"body{n}")
    items = [InFlight.from_sqs(queue, raw, clock.now())
             for start in range(0, count, 10)
             for raw in fake.receive(url, min(10, count - start), 0, visibility_s)]
    beat = hb.Heartbeat(AsyncFakeSqs(fake), clock)
    for item in items:
        beat.track(item)
    return clock, fake, url, items, beat


def test_25_due_messages_take_three_batch_calls():
    clock, fake, url, items, beat = setup(25)
    clock.advance(30)
    delay = asyncio.run(beat.beat(clock.now()))
    sizes = [len(entries) for _, entries in fake.calls_to("change_visibility_batch")]
    assert sizes == [10, 10, 5]
    assert all(m.visible_at == clock.now() + 60 for m in fake.messages(url))
    assert all(i.visible_until == clock.now() + 60 for i in items)
    assert delay == 30
    assert beat.calls == 3


def test_nothing_due_means_no_call():
    clock, fake, _, _, beat = setup(3)
    clock.advance(29)
    assert asyncio.run(beat.beat(clock.now())) == 1
    assert fake.calls_to("change_visibility_batch") == []


def test_an_invalid_receipt_marks_the_item_lost_and_is_logged(caplog):
    clock, fake, _, items, beat = setup(3)
    fake.fail_entries([items[1].receipt], "ReceiptHandleIsInvalid")
    clock.advance(30)
    with caplog.at_level(logging.INFO, logger="vip_worker.heartbeat"):
        delay = asyncio.run(beat.beat(clock.now()))
    failed = [r for r in caplog.records if r.getMessage() == "heartbeat.entry_failed"]
    assert [(r.message_id, r.error_code, r.lost) for r in failed] == [
        (items[1].message_id, "ReceiptHandleIsInvalid", True)]
    assert [i.lost for i in items] == [False, True, False]
    assert delay == 30  # a lost receipt is no reason to hurry
    extended = [r for r in caplog.records if r.getMessage() == "heartbeat.extended"]
    assert (extended[0].count, extended[0].failed) == (2, 1)


def test_a_transient_entry_failure_is_retried_soon(caplog):
    clock, fake, _, items, beat = setup(2)
    fake.fail_entries([items[0].receipt], "InternalError")
    clock.advance(30)
    with caplog.at_level(logging.ERROR, logger="vip_worker.heartbeat"):
        assert asyncio.run(beat.beat(clock.now())) == hb.RETRY_AFTER_ERROR_S
    assert not items[0].lost
    assert items[0].visible_until == clock.now() + 30  # unchanged: still due
    assert items[1].visible_until == clock.now() + 60
    assert "heartbeat.entry_failed" in [r.getMessage() for r in caplog.records]


def test_a_failed_call_returns_a_short_retry_delay(caplog):
    clock, fake, _, items, beat = setup(2)
    fake.fail_next("change_visibility_batch", "ThrottlingException")
    clock.advance(30)
    with caplog.at_level(logging.ERROR, logger="vip_worker.heartbeat"):
        assert asyncio.run(beat.beat(clock.now())) == hb.RETRY_AFTER_ERROR_S
    record = next(r for r in caplog.records if r.getMessage() == "heartbeat.failed")
    assert (record.error_code, record.count) == ("ThrottlingException", 2)
    assert all(i.visible_until == clock.now() + 30 for i in items)
    assert not any(i.lost for i in items)


def test_the_cap_stops_extensions_and_is_logged_once(caplog):
    clock, fake, url, items, beat = setup(1)
    item = items[0]
    clock.t = item.cap_at - 20
    item.visible_until = clock.now() + 10
    fake.messages(url)[0].visible_at = item.visible_until
    with caplog.at_level(logging.WARNING, logger="vip_worker.heartbeat"):
        asyncio.run(beat.beat(clock.now()))
        asyncio.run(beat.beat(clock.now()))
    # The one call that was left added what it could, clipped to the cap.
    assert [entries for _, entries in fake.calls_to("change_visibility_batch")] == [
        [("0", item.receipt, 20)]]
    assert item.capped
    assert [r.getMessage() for r in caplog.records].count("heartbeat.cap_reached") == 1


def test_track_wakes_the_loop_only_for_an_earlier_due_time():
    clock, _, _, items, beat = setup(1)
    beat.next_at = items[0].visible_until - 30
    beat.track(InFlight(queue=B, message_id="x", receipt="x", body="", receive_count=1,
                        received_at=clock.now(), visible_until=clock.now() + 600))
    assert not beat.wakeup.is_set()
    beat.track(InFlight(queue=A, message_id="y", receipt="y", body="", receive_count=1,
                        received_at=clock.now(), visible_until=clock.now() + 10))
    assert beat.wakeup.is_set()


@pytest.mark.timeout(20)
def test_a_ten_minute_job_under_a_60s_timeout_never_becomes_visible():
    clock, fake, url, items, beat = setup(1, visibility_s=60)
    item = items[0]
    start = clock.now()

    async def job():
        wake_at = clock.now()
        while clock.now() < start + 600:
            if clock.now() >= wake_at:
                wake_at = clock.now() + await beat.beat(clock.now())
            # Another poller receiving now would get nothing: the message stays hidden.
            assert fake.visible(url) == []
            assert fake.take(url, 10, 60) == []
            clock.advance(1)
        beat.untrack(item)
        return await AsyncFakeSqs(fake).delete_batch(url, [("0", item.receipt)])

    assert asyncio.run(job()) == []
    assert fake.messages(url) == []
    assert fake.deleted(url)[0].receive_count == 1
    assert 18 <= len(fake.calls_to("change_visibility_batch")) <= 21
