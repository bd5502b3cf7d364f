"""Where a job ends, its completion callback is recorded: the ledger's settles (completed,
failed), a claim that finds the attempts exhausted, and the lifeline's failed rescue.
A retry is not an end."""

from __future__ import annotations

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.jobstore import RecordingStore
from tests.support.lifeline import LEASE_S, SweepHarness, at, claim
from tests.support.sqs import envelope
from vip_worker.errors import PermanentError, RetryLater
from vip_worker.testing import MemoryStore

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"
PAYLOAD = {"topic": "t", "callbackUrl": "https://app.example.com/hooks"}


class Recording(ConsumerHarness):
    """A consumer whose ledger reports each ended job to ``ended``."""

    def __init__(self, handler, **kwargs):
        self.ended: list[tuple[str, dict]] = []
        self.memory = MemoryStore()
        super().__init__({"articles": handler}, store=RecordingStore(self.memory), **kwargs)

    def make_consumer(self):
        consumer = super().make_consumer()

        async def on_ended(job_id, payload):
            self.ended.append((job_id, payload))

        consumer.ledger.on_ended = on_ended
        return consumer

    def settle(self, condition):
        async def scenario(consumer):
            await wait_until(lambda: condition() and self.idle(), what="the consumer to settle")

        self.run(scenario)


def handler_raising(error):
    def handler(message, ctx):
        if error is not None:
            raise error

    return handler


def test_a_completed_job_is_reported_with_its_payload():
    h = Recording(handler_raising(None))
    h.send(envelope(job_id=JOB, payload=PAYLOAD))
    h.settle(lambda: h.fake.deleted(h.url))
    assert h.ended == [(JOB, PAYLOAD)]


def test_a_failed_job_is_reported():
    h = Recording(handler_raising(PermanentError("no")))
    h.send(envelope(job_id=JOB, payload=PAYLOAD))
    h.settle(lambda: h.fake.messages(h.dlq_url))
    assert h.ended == [(JOB, PAYLOAD)]


def test_a_retry_is_not_an_end():
    h = Recording(handler_raising(RetryLater("later", delay_s=30)))
    h.send(envelope(job_id=JOB, payload=PAYLOAD))
    h.settle(lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.ended == []


def test_a_claim_that_finds_the_attempts_exhausted_reports_the_failed_job():
    h = Recording(handler_raising(None), max_attempts=2)
    for n, delivery in enumerate(["died-1", "died-2"]):
        h.memory.claim(JOB, user_id="u1", type="articles", params=PAYLOAD,
                       message_id=f"m{n}", lease_s=-10 + 5 * n, now=at(0), delivery=delivery)
    h.send(envelope(job_id=JOB, payload=PAYLOAD))
    h.settle(lambda: h.fake.messages(h.dlq_url))
    assert h.memory.get_job(JOB)["status"] == "failed"
    assert h.ended == [(JOB, PAYLOAD)]


def test_the_lifelines_failed_rescue_reports_the_job():
    store = MemoryStore()
    h = SweepHarness(max_attempts=1)
    claim(store, delivery="d1")
    sweeper = h.sweeper(store)
    ended = []

    async def on_ended(job_id, payload):
        ended.append((job_id, payload))

    sweeper.on_ended = on_ended
    result = h.sweep(store, at(LEASE_S + 60), sweeper)
    sweeper.close()
    store.close()
    assert result.failed == 1
    assert ended == [("job-1", {"topic": "t"})]


def test_a_redelivered_completed_job_is_reported_again_its_record_being_idempotent():
    # Its poller died after the handler saved the result, before the settle recorded the
    # callback: the redelivery is the chance to record it.
    h = Recording(handler_raising(None))
    h.memory.claim(JOB, user_id="u1", type="articles", params=PAYLOAD, message_id="m0",
                   lease_s=60, now=at(0), delivery="died")
    h.memory.save_result(JOB, "generated_content", {"title": "T"}, at(1))
    h.send(envelope(job_id=JOB, payload=PAYLOAD))
    h.settle(lambda: h.fake.deleted(h.url))
    assert h.ended == [(JOB, PAYLOAD)]
