"""A handler (or the pipeline) raising ``Deferred``: the claim is released with its attempt
refunded, the message is due again after the delay plus jitter, the slot is freed at once,
and SQS's receive count never takes it to the DLQ (the re-send one receive early)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.jobstore import events, tracked_harness
from tests.support.sqs import envelope
from vip_worker.errors import Deferred
from vip_worker.inflight import CAP_MARGIN_S
from vip_worker.outcomes import Action, decide, defer_delay

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


def settle(h: ConsumerHarness, condition):
    async def scenario(consumer):
        await wait_until(lambda: condition() and h.idle(), what="the consumer to settle")
        return consumer

    return h.run(scenario)


def defer(reason="quota:generation:rpm", delay_s=30.0):
    def handler(message, ctx):
        raise Deferred(reason, delay_s)

    return handler


# -- the rule ----------------------------------------------------------------------------


def test_deferred_is_its_own_outcome_even_on_the_last_attempt():
    error = Deferred("quota:generation:rpm", 12)
    decision = decide(error, attempt=5, max_attempts=5, backoff_base_s=10,
                      backoff_max_s=900, rand=lambda: 0.0)
    assert (decision.action, decision.delay_s, decision.error) == (Action.DEFER, 12, error)


def test_the_deferral_jitter_adds_up_to_a_fifth_of_the_delay_and_at_least_a_second():
    assert defer_delay(100, lambda: 0.0) == 100
    assert defer_delay(100, lambda: 1.0) == 120
    assert defer_delay(0, lambda: 1.0) == 1  # a pause that ends now: not all at once
    assert defer_delay(-5, lambda: 0.0) == 0


# -- the consumer ------------------------------------------------------------------------


def test_a_deferred_job_is_released_with_its_attempt_refunded(consumer_logs):
    h, store = tracked_harness(defer(delay_s=30), max_attempts=1)
    h.send(envelope(job_id=JOB))
    consumer = settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.visible_at == h.clock.now() + 30  # rand 0: no jitter
    assert h.fake.messages(h.dlq_url) == []  # the last attempt, yet never dead-lettered
    assert store.calls_to("release") == 1 and store.calls_to("requeue") == 0
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"], job["leaseUntil"]) == ("queued", 0, None)
    assert job["message"] == "quota:generation:rpm"
    (record,) = events(consumer_logs, "message.deferred")
    assert (record.reason, record.delay_s, record.job_id) == ("quota:generation:rpm", 30, JOB)
    assert consumer.stats["deferred"] == 1 and consumer.stats["retried"] == 0
    assert consumer.queue_metrics["work"].deferred == 1
    assert not events(consumer_logs, "message.retried")


def test_an_untracked_message_is_deferred_too_never_dead_lettered():
    h = ConsumerHarness({"articles": defer(delay_s=5)}, max_attempts=1)
    h.send(envelope(job_id=JOB))
    consumer = settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.visible_at == h.clock.now() + 5
    assert h.fake.messages(h.dlq_url) == [] and consumer.stats["deferred"] == 1


def test_a_deferral_longer_than_sqs_allows_waits_as_long_as_it_can():
    h, _ = tracked_harness(defer(delay_s=48 * 3600))
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    # Near 12 hours from its receive (SQS's visibility cap, less the margin), not 48.
    assert message.visible_at == message.received_at + 12 * 3600 - CAP_MARGIN_S


def test_the_slot_is_freed_at_once():
    order = []

    def handler(message, ctx):
        order.append(message.job_id)
        if message.job_id == JOB:
            raise Deferred("quota:generation:concurrency", 600)

    h, store = tracked_harness(handler, worker={"concurrency": 1})
    h.send(envelope(job_id=JOB))
    h.send(envelope(job_id="b" * 24))
    settle(h, lambda: h.fake.deleted(h.url))
    # One slot: the second job ran while the first waits out its ten minutes.
    assert order == [JOB, "b" * 24]
    assert store.get_job("b" * 24)["status"] == "completed"
    assert store.get_job(JOB)["status"] == "queued"


def test_a_deferral_one_receive_before_the_redrive_is_resent(consumer_logs):
    h, store = tracked_harness(defer(delay_s=2000))
    h.max_receives = {"work": 3}
    old_id = h.send(envelope(job_id=JOB))
    h.fake.take(h.url, 1, 0)  # an earlier receive: the consumer's is the second of three
    settle(h, lambda: h.fake.deleted(h.url))
    (copy,) = h.fake.messages(h.url)
    assert copy.message_id != old_id and copy.receive_count == 0
    assert copy.visible_at == h.clock.now() + 900  # SQS's DelaySeconds limit
    (record,) = events(consumer_logs, "message.resent")
    assert record.reason == "deferred"
    assert store.get_job(JOB)["attempts"] == 0


def test_deferred_many_more_times_than_max_receive_count_never_reaches_the_dlq():
    deferrals, limit = 12, 3
    seen = []

    def handler(message, ctx):
        seen.append(ctx.attempt)
        if len(seen) <= deferrals:
            raise Deferred("quota:generation:rpm", 0)

    h, store = tracked_harness(handler, max_attempts=2)
    h.max_receives = {"work": limit}
    h.send(envelope(job_id=JOB))
    consumer = settle(h, lambda: store.get_job(JOB) and
                      store.get_job(JOB)["status"] == "completed")
    assert len(seen) == deferrals + 1
    assert set(seen) == {1}  # every run was the job's first attempt
    everything = h.fake.queue(h.url).messages
    # The fake has no redrive: check no copy ever got the receive that would trigger it.
    assert max(m.receive_count for m in everything) <= limit - 1
    assert h.fake.messages(h.dlq_url) == []
    assert consumer.stats["deferred"] == deferrals
    assert consumer.resender.resent >= deferrals // (limit - 1) - 1
    assert store.get_job(JOB)["attempts"] == 1


def test_a_deferral_during_shutdown_still_frees_the_job(consumer_logs):
    gate = asyncio.Event()

    async def handler(message, ctx):
        await gate.wait()
        raise Deferred("provider_paused:generation", 10)

    h, store = tracked_harness(handler)
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: consumer.ledger.claimed, what="the claim")
        drain = asyncio.create_task(consumer.drain(5, wait_for_polls=False))
        await asyncio.sleep(0)
        gate.set()
        await drain

    h.run(scenario)
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"]) == ("queued", 0)
    assert events(consumer_logs, "message.deferred")


def test_deferrals_are_an_emf_metric():
    from vip_worker.services import metrics

    counts = metrics.QueueMetrics()
    assert counts.empty()
    counts.record("deferred", None)
    assert not counts.empty()
    fields = metrics.emf_fields("VipWorker", "work", counts, None, now_ms=1)
    assert fields["MessagesDeferred"] == 1
    names = {m["Name"] for m in fields["aws_emf"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "MessagesDeferred" in names
