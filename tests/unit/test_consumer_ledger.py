"""The daemon's job ledger on a fake SQS and an in-memory store: the consumer claims a
message's job before its handler, settles it after, renews leases, counts attempts from
the store, and re-sends a message before SQS's redrive could take it silently."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.jobstore import events, tracked_harness
from tests.support.sqs import envelope
from vip_worker.errors import PermanentError
from vip_worker.ledger import delivery_token
from vip_worker.testing import MemoryStore

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"
CONTENT = "generated_content"


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


harness = tracked_harness


def settle(h: ConsumerHarness, condition):
    async def scenario(consumer):
        await wait_until(lambda: condition() and h.idle(), what="the consumer to settle")
        return consumer

    return h.run(scenario)


def fail_with(error):
    def handler(message, ctx):
        raise error

    return handler


def claim_elsewhere(store, lease_s: float, delivery="other", **extra):
    """The job held by another delivery (another poller), its lease ``lease_s`` from now."""
    now = datetime.now(UTC)
    return store.claim(JOB, user_id="u1", type="articles", params={}, message_id="m-other",
                       lease_s=lease_s, now=now, delivery=delivery, **extra)


# -- claim outcomes ----------------------------------------------------------------------


def test_a_claimed_job_runs_with_the_ledgers_attempt_and_completes():
    seen = []

    def handler(message, ctx):
        job = ctx.store.get_job(message.job_id)
        seen.append((ctx.attempt, ctx.delivery, job["status"], job["delivery"]))
        ctx.progress(50, "Half way")

    h, store = harness(handler)
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    (message,) = h.fake.deleted(h.url)
    token = delivery_token(message.receipt)
    assert seen == [(1, token, "processing", token)]
    job = store.get_job(JOB)
    # The handler saved nothing: the daemon completes the job itself.
    assert (job["status"], job["progress"], job["attempts"], job["leaseUntil"],
            job["queue"]) == ("completed", 100, 1, None, "work")
    assert store.get_content(CONTENT, JOB) == []


def test_a_handler_that_saves_its_result_completes_the_job_once():
    def handler(message, ctx):
        ctx.store.save_result(message.job_id, CONTENT, {"title": "t"}, datetime.now(UTC))

    h, store = harness(handler)
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    assert store.get_job(JOB)["status"] == "completed"
    assert len(store.get_content(CONTENT, JOB)) == 1
    assert store.calls_to("claim") == 1 and store.calls_to("complete") == 1  # a no-op


def test_a_completed_job_is_deleted_without_running_the_handler(consumer_logs):
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message))
    store.create_job(JOB, "u1", "articles", {}, datetime.now(UTC))
    claim_elsewhere(store, 60)
    store.complete(JOB, datetime.now(UTC), delivery="other")
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    assert calls == [] and h.fake.messages(h.dlq_url) == []
    assert events(consumer_logs, "job.already_completed")


def test_a_busy_job_comes_back_after_the_other_lease_without_spending_an_attempt():
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message))
    claim_elsewhere(store, 120)
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert calls == []
    assert 115 <= message.visible_at - h.clock.now() <= 120  # the other lease's rest
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"], job["delivery"]) == ("processing", 1, "other")


def test_an_exhausted_job_is_dead_lettered_with_its_reason():
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message), max_attempts=2)
    claim_elsewhere(store, -10, delivery="died-1")  # its poller died: the lease ran out
    claim_elsewhere(store, -5, delivery="died-2")  # a second lost claim
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.messages(h.dlq_url))
    assert calls == []
    (dead,) = h.fake.messages(h.dlq_url)
    assert "its poller died 2 times" in dead.attributes["vip_error"]["StringValue"]
    assert store.get_job(JOB)["status"] == "failed"


def test_a_store_outage_at_the_claim_is_retried_never_dead_lettered():
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message), max_attempts=1)
    store.failing.add("claim")
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert calls == [] and h.fake.messages(h.dlq_url) == []
    assert len(h.fake.messages(h.url)) == 1


def test_a_transient_failure_requeues_the_job_and_a_permanent_one_fails_it():
    h, store = harness(fail_with(ValueError("flaky")))
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    job = store.get_job(JOB)
    assert (job["status"], job["error"], job["attempts"]) == (
        "queued", "ValueError: flaky", 1)

    h, store = harness(fail_with(PermanentError("bad topic")))
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.messages(h.dlq_url))
    job = store.get_job(JOB)
    assert (job["status"], job["error"]) == ("failed", "PermanentError: bad topic")


def test_a_store_outage_at_the_settle_retries_the_message():
    h, store = harness(fail_with(PermanentError("bad topic")))
    store.failing.add("fail")
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.fake.messages(h.dlq_url) == []  # not dead-lettered while the job cannot say so


def test_a_message_without_tracking_runs_as_before():
    seen = []
    h, store = harness(lambda message, ctx: seen.append((ctx.attempt, ctx.delivery)),
                       track_jobs=False)
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    assert seen == [(1, None)]
    assert store.calls == [] and store.get_job(JOB) is None


# -- attempts belong to the daemon -------------------------------------------------------


def test_attempts_come_from_the_ledger_not_the_receive_count():
    h, store = harness(fail_with(ValueError("flaky")), max_attempts=3)
    h.send(envelope(job_id=JOB))
    for _ in range(5):  # receives that never started a handler (lost, handed back)
        h.fake.take(h.url, 1, 0)
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.receive_count == 6  # past max_attempts: SQS's count would dead-letter
    assert h.fake.messages(h.dlq_url) == []
    # The backoff grows with the attempt (1: half of 10 s), not with the receive count.
    assert message.visible_at == h.clock.now() + 5
    assert store.get_job(JOB)["attempts"] == 1


def test_the_last_ledger_attempt_dead_letters_and_fails_the_job():
    h, store = harness(fail_with(ValueError("flaky")), max_attempts=2)
    store.claim(JOB, user_id="u1", type="articles", params={}, message_id="m0", lease_s=60,
                now=datetime.now(UTC), delivery="earlier")
    store.requeue(JOB, "flaky", datetime.now(UTC), delivery="earlier")
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.messages(h.dlq_url))
    (dead,) = h.fake.messages(h.dlq_url)
    assert dead.attributes["vip_attempts"]["StringValue"] == "2"
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"]) == ("failed", 2)


def test_a_redriven_failed_job_gets_its_attempts_again():
    h, store = harness(fail_with(ValueError("flaky")), max_attempts=2)
    for n in range(2):  # two attempts, then failed and dead-lettered
        store.claim(JOB, user_id="u1", type="articles", params={}, message_id="m0",
                    lease_s=60, now=datetime.now(UTC), delivery=f"earlier-{n}")
        store.requeue(JOB, "flaky", datetime.now(UTC), delivery=f"earlier-{n}")
    store.fail(JOB, "gave up", datetime.now(UTC))
    # `vip-worker dlq redrive` sent it back, marked so
    h.fake.send(h.url, envelope(job_id=JOB),
                {"vip_redriven_from": {"DataType": "String", "StringValue": "dlq-1"}})
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.fake.messages(h.dlq_url) == []
    assert (store.get_job(JOB)["status"], store.get_job(JOB)["attempts"]) == ("queued", 1)


def test_a_hand_back_at_shutdown_spends_no_attempt(consumer_logs):
    gate, started = asyncio.Event(), []

    async def handler(message, ctx):
        started.append(message.job_id)
        await gate.wait()

    h, store = harness(handler, worker={"type_limits": {"articles": 1}})
    h.send(envelope(job_id="a" * 24))
    h.send(envelope(job_id=JOB))  # waits behind the type limit: never starts

    async def scenario(consumer):
        await wait_until(lambda: started, what="the first handler")
        await consumer.drain(0, wait_for_polls=False)

    h.run(scenario)
    waiting = store.get_job(JOB)
    assert waiting is None or waiting["attempts"] == 0
    # The one cut off while running spent its attempt and is queued again.
    cut = store.get_job("a" * 24)
    assert (cut["status"], cut["attempts"]) == ("queued", 1)
    assert len(h.fake.visible(h.url)) == 2


# -- leases ------------------------------------------------------------------------------


def blocked_harness(jobs):
    gate = asyncio.Event()

    async def handler(message, ctx):
        await gate.wait()

    h, store = harness(handler, worker={"concurrency": 10})
    for job_id in jobs:
        h.send(envelope(job_id=job_id))
    return h, store, gate


def held_delivery(consumer, job_id):
    return next(i.delivery for i in consumer.ledger.claimed.values()
                if i.envelope.job_id == job_id)


def test_one_store_call_renews_every_held_lease_and_a_lost_one_is_left_alone(consumer_logs):
    jobs = [f"{n:024x}" for n in range(4)]
    h, store, gate = blocked_harness(jobs)

    async def scenario(consumer):
        await wait_until(lambda: len(consumer.ledger.claimed) == 4, what="four claims")
        before = store.calls_to("renew_leases")
        await consumer.ledger.renew()
        assert store.calls_to("renew_leases") == before + 1
        # This poller froze past its lease and another delivery took the job over.
        store.release(jobs[0], held_delivery(consumer, jobs[0]), datetime.now(UTC), "lost")
        store.claim(jobs[0], user_id="u1", type="articles", params={}, message_id="m-x",
                    lease_s=600, now=datetime.now(UTC), delivery="thief")
        await consumer.ledger.renew()
        gate.set()
        await wait_until(lambda: len(h.fake.deleted(h.url)) == 4 and h.idle(),
                         what="the handlers")

    h.run(scenario)
    (lost,) = events(consumer_logs, "job.lease_lost")
    assert lost.job_id == jobs[0] and lost.levelname == "WARNING"
    taken = store.get_job(jobs[0])  # the other delivery's: never settled from here
    assert (taken["status"], taken["delivery"]) == ("processing", "thief")
    assert [store.get_job(j)["status"] for j in jobs[1:]] == ["completed"] * 3


def test_the_lease_task_renews_once_per_interval_for_all_held_jobs():
    jobs = [f"{n:024x}" for n in range(3)]
    h, store, gate = blocked_harness(jobs)

    async def scenario(consumer):
        ledger = consumer.ledger
        await wait_until(lambda: len(ledger.claimed) == 3, what="three claims")
        ledger.interval_s = 0.01
        task = asyncio.create_task(ledger.run())
        await wait_until(lambda: ledger.renewals >= 3, what="three renewals")
        task.cancel()
        gate.set()
        await wait_until(lambda: len(h.fake.deleted(h.url)) == 3 and h.idle(),
                         what="the handlers")
        return ledger.renewals

    renewals = h.run(scenario)
    # One call per interval for the three jobs, not one per job (the last may have been
    # under way when the task was cancelled).
    assert store.calls_to("renew_leases") in (renewals, renewals + 1)


# -- re-sending before SQS's redrive -----------------------------------------------------


def test_a_retry_at_max_receive_count_is_resent_with_its_attempts(consumer_logs):
    h, store = harness(fail_with(ValueError("flaky")))
    h.max_receives = {"work": 2}
    old_id = h.send(envelope(job_id=JOB))
    h.fake.take(h.url, 1, 0)  # an earlier receive that never ran (a hand-back)
    settle(h, lambda: h.fake.deleted(h.url))
    (copy,) = h.fake.messages(h.url)
    assert copy.message_id != old_id and copy.receive_count == 0
    assert copy.attributes["vip_prior_attempts"]["StringValue"] == "1"
    assert "vip_first_receive" in copy.attributes
    assert copy.visible_at == h.clock.now() + 5  # the retry delay, as DelaySeconds
    (record,) = events(consumer_logs, "message.resent")
    assert (record.reason, record.new_message_id) == ("retry", copy.message_id)
    assert store.get_job(JOB)["status"] == "queued"


def test_a_hand_back_at_max_receive_count_is_resent():
    gate = asyncio.Event()

    async def handler(message, ctx):
        await gate.wait()

    h, store = harness(handler)
    h.max_receives = {"work": 1}
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: consumer.ledger.claimed, what="the claim")
        await consumer.drain(0, wait_for_polls=False)

    h.run(scenario)
    (copy,) = h.fake.messages(h.url)
    assert copy.receive_count == 0 and copy.visible_at <= h.clock.now()
    assert copy.attributes["vip_prior_attempts"]["StringValue"] == "1"


def test_an_untracked_resent_message_keeps_counting_its_attempts():
    h, _ = harness(fail_with(ValueError("flaky")), track_jobs=False, max_attempts=3)
    h.max_receives = {"work": 1}
    h.fake.send(h.url, envelope(job_id=JOB),
                {"vip_attempts": {"DataType": "Number", "StringValue": "2"}})
    settle(h, lambda: h.fake.messages(h.dlq_url))  # attempt 3 of 3: dead-lettered
    assert h.fake.messages(h.url) == []


def test_a_claim_handed_back_before_its_handler_started_is_released():
    calls, claim_may_go = [], threading.Event()
    h, store = harness(lambda message, ctx: calls.append(message))
    real_claim = store.store.claim

    def slow_claim(*args, **kwargs):
        claim_may_go.wait(10)
        return real_claim(*args, **kwargs)

    store.store.claim = slow_claim
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: store.calls_to("claim") == 1, what="the claim to be sent")
        drain = asyncio.create_task(consumer.drain(0, wait_for_polls=False))
        await wait_until(lambda: all(i.settled for i in consumer.held.values()),
                         what="the hand-back")
        claim_may_go.set()  # the claim lands after the message was handed back
        await drain

    h.run(scenario)
    assert calls == []
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"], job["leaseUntil"]) == ("queued", 0, None)
    assert len(h.fake.visible(h.url)) == 1


# -- a failed job is never rerun but by a redrive ----------------------------------------


def test_a_failed_job_whose_dead_letter_send_failed_is_dead_lettered_again_not_rerun():
    calls = []

    def handler(message, ctx):
        calls.append(ctx.attempt)
        raise PermanentError("bad request")

    h, store = harness(handler)
    h.send(envelope(job_id=JOB))
    h.fake.fail_next("send")  # the DLQ send fails: the message comes back

    async def scenario(consumer):
        await wait_until(lambda: h.fake.calls_to("change_visibility_batch") and h.idle())
        assert store.get_job(JOB)["status"] == "failed" and h.fake.messages(h.dlq_url) == []
        h.clock.advance(3600)
        h.sqs.wake()
        await wait_until(lambda: h.fake.messages(h.dlq_url) and h.fake.deleted(h.url)
                         and h.idle())

    h.run(scenario)
    assert calls == [1]  # never run again
    (dead,) = h.fake.messages(h.dlq_url)
    assert "bad request" in dead.attributes["vip_error"]["StringValue"]
    assert store.get_job(JOB)["attempts"] == 1


def test_a_duplicate_of_a_failed_job_without_a_dlq_is_deleted_unrun():
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message), dlq=False)
    claim_elsewhere(store, 60)
    store.fail(JOB, "bad request", datetime.now(UTC), delivery="other")
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    assert calls == [] and store.get_job(JOB)["status"] == "failed"


def test_a_redriven_copy_of_a_failed_job_runs_afresh():
    calls = []
    h, store = harness(lambda message, ctx: calls.append(ctx.attempt))
    claim_elsewhere(store, 60)
    store.fail(JOB, "bad request", datetime.now(UTC), delivery="other")
    h.fake.send(h.url, envelope(job_id=JOB),
                {"vip_redriven_from": {"DataType": "String", "StringValue": "dlq-1"}})
    settle(h, lambda: h.fake.deleted(h.url))
    assert calls == [1] and store.get_job(JOB)["status"] == "completed"


def test_lease_renewals_do_not_wait_behind_claims_stuck_in_the_store():
    from types import SimpleNamespace

    from tests.fakes import make_settings
    from vip_worker.ledger import LEDGER_THREADS, Ledger
    from vip_worker.plugins.context import STORE, PollerContext

    stuck = threading.Event()

    class SlowStore:
        def claim(self, *args, **kwargs):
            stuck.wait(10)

        def renew_leases(self, held, lease_until, now):
            return {job_id for job_id, _ in held}

    settings = make_settings()
    context = PollerContext(0, settings)
    store = SlowStore()
    context.provide(STORE, lambda: store)
    ledger = Ledger(context, settings.queues)
    item = SimpleNamespace(lease_lost=False, envelope=SimpleNamespace(job_id=JOB),
                           delivery="d1", queue=settings.queues[0], log_fields=dict)
    ledger.claimed[id(item)] = item

    async def scenario():
        claims = [asyncio.ensure_future(ledger.call("claim")) for _ in range(LEDGER_THREADS)]
        await asyncio.sleep(0.05)  # every ledger thread is stuck in a claim
        try:
            await asyncio.wait_for(ledger.renew(), 2)
        finally:
            stuck.set()
            await asyncio.gather(*claims)

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()
    assert ledger.renewals == 1 and not item.lease_lost


def test_a_retry_records_when_the_message_is_visible_again():
    from vip_worker.errors import RetryLater

    h, store = harness(fail_with(RetryLater("later", delay_s=7200)))
    h.send(envelope(job_id=JOB))
    before = datetime.now(UTC)
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    job = store.get_job(JOB)
    assert job["status"] == "queued"
    waited = (job["queuedAt"] - before).total_seconds()
    assert 7190 <= waited <= 7210


def test_a_redriven_dead_letter_keeping_its_attributes_gets_its_attempts_again():
    calls = []

    def handler(message, ctx):
        calls.append(ctx.attempt)
        raise ValueError("flaky")

    h, _ = harness(handler, track_jobs=False, max_attempts=3)
    # A console redrive keeps the dead-letter copy's attributes, its count among them.
    h.fake.send(h.url, envelope(job_id=JOB), {
        "vip_attempts": {"DataType": "Number", "StringValue": "3"},
        "vip_error_class": {"DataType": "String", "StringValue": "ValueError"}})
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert calls == [1] and h.fake.messages(h.dlq_url) == []  # retried, not dead-lettered


def test_a_resent_copy_counts_its_prior_attempts():
    h, _ = harness(fail_with(ValueError("flaky")), track_jobs=False, max_attempts=3)
    h.fake.send(h.url, envelope(job_id=JOB),
                {"vip_prior_attempts": {"DataType": "Number", "StringValue": "2"}})
    settle(h, lambda: h.fake.messages(h.dlq_url))  # attempt 3 of 3: dead-lettered
    (dead,) = h.fake.messages(h.dlq_url)
    assert dead.attributes["vip_attempts"]["StringValue"] == "3"


def test_a_resend_whose_delete_fails_once_deletes_the_old_message_on_a_second_try(
        consumer_logs):
    h, store = harness(fail_with(ValueError("flaky")))
    h.max_receives = {"work": 1}
    old_id = h.send(envelope(job_id=JOB))
    h.fake.fail_next("delete_batch")
    settle(h, lambda: len(h.fake.calls_to("delete_batch")) >= 2)
    assert [m.message_id for m in h.fake.deleted(h.url)] == [old_id]
    (copy,) = h.fake.messages(h.url)
    assert copy.attributes["vip_prior_attempts"]["StringValue"] == "1"
    assert not events(consumer_logs, "message.resend_delete_failed")


def test_a_resend_whose_delete_keeps_failing_is_logged(consumer_logs):
    h, store = harness(fail_with(ValueError("flaky")))
    h.max_receives = {"work": 1}
    h.send(envelope(job_id=JOB))
    h.fake.fail_next("delete_batch", times=None)
    settle(h, lambda: events(consumer_logs, "message.resent"))
    (line,) = events(consumer_logs, "message.resend_delete_failed")
    assert (line.levelname, line.tries) == ("ERROR", 3)
    assert len(h.fake.calls_to("delete_batch")) == 3


def test_a_retry_whose_requeue_a_store_outage_lost_is_no_lost_claim(consumer_logs):
    from vip_worker.store import StoreUnavailable

    class FlakyStore(MemoryStore):
        outages = 1

        def requeue(self, *args, **kwargs):
            if self.outages:
                self.outages -= 1
                raise StoreUnavailable("down for a moment")
            return super().requeue(*args, **kwargs)

    calls = []

    def handler(message, ctx):
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise ValueError("flaky")

    store = FlakyStore()
    h = ConsumerHarness({"articles": handler}, store=store, max_attempts=3)
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: events(consumer_logs, "job.settle_failed") and h.idle())
        h.clock.advance(3600)  # the retry delay is over: SQS delivers the message again
        h.sqs.wake()
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle())

    h.run(scenario)
    job = store.get_job(JOB)
    # Taken over at once (the lease was still live) and no poller death counted.
    assert calls == [1, 2]
    assert (job["status"], job["attempts"], job["lostClaims"]) == ("completed", 2, 0)
