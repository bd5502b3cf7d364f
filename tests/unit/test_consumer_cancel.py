"""Cancellation in the consumer, on a fake SQS and an in-memory store: a job cancelled
while queued is deleted unrun; a running job is told at the ledger's next renewal (an
async handler's task is cancelled, a blocking handler sees ``ctx.cancelled`` or is
abandoned after ``cancel_grace_s``); its message is deleted and the job ends
``cancelled``."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime

import pytest

from tests.fakes import wait_until
from tests.support.jobstore import events, tracked_harness
from tests.support.sqs import envelope
from vip_worker.errors import JobCancelled, PermanentError
from vip_worker.outcomes import Action, decide
from vip_worker.store import CancelOutcome

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


harness = tracked_harness


def now():
    return datetime.now(UTC)


def assert_cancelled(h, store):
    """The job ends cancelled, its message deleted: nothing left, nothing dead-lettered."""
    assert store.get_job(JOB)["status"] == "cancelled"
    assert len(h.fake.deleted(h.url)) == 1
    assert h.fake.messages(h.url) == [] and h.fake.messages(h.dlq_url) == []
    assert h.consumer.stats["retried"] == 0 and h.consumer.stats["dead_lettered"] == 0


def cancel_while_running(h, store, started):
    """Run until the handler started, cancel its job, renew once, wait for the delete."""
    async def scenario(consumer):
        await wait_until(started.is_set, what="the handler to start")
        assert store.request_cancel(JOB, now()).outcome is CancelOutcome.REQUESTED
        await consumer.ledger.renew()  # the lease task's next interval
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the delete")

    h.run(scenario)


def test_decide_cancels_on_job_cancelled_never_retries_nor_dead_letters():
    for attempt in (1, 5):
        decision = decide(JobCancelled("x"), attempt, 5, 1.0, 60.0)
        assert decision.action is Action.CANCEL and decision.delay_s is None


def test_a_job_cancelled_while_queued_is_deleted_and_never_runs(consumer_logs):
    calls = []
    h, store = harness(lambda message, ctx: calls.append(message))
    store.create_job(JOB, "u1", "articles", {}, now())
    store.request_cancel(JOB, now())
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the delete")

    h.run(scenario)
    assert calls == []
    assert_cancelled(h, store)
    (line,) = events(consumer_logs, "job.cancelled")
    assert line.job_id == JOB and line.started is False


def test_an_async_handler_is_cancelled_mid_run(consumer_logs):
    started, seen = threading.Event(), []

    async def handler(message, ctx):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    h, store = harness(handler)
    h.send(envelope(job_id=JOB))
    cancel_while_running(h, store, started)
    assert seen == ["cancelled"]
    assert_cancelled(h, store)
    assert events(consumer_logs, "job.cancel_requested") and events(consumer_logs,
                                                                    "job.cancelled")
    assert store.calls_to("cancel_held") == 1


def test_a_blocking_handler_that_checks_ctx_cancelled_stops():
    started, seen = threading.Event(), []

    def handler(message, ctx):
        started.set()
        assert not ctx.cancelled
        ctx.cancel_event.wait(20)  # its work, one step at a time
        seen.append(ctx.cancelled)
        ctx.raise_if_cancelled()

    h, store = harness(handler)
    h.send(envelope(job_id=JOB))
    cancel_while_running(h, store, started)
    assert seen == [True]
    assert_cancelled(h, store)
    assert h.consumer.abandoned_threads == 0


def test_a_blocking_handler_that_ignores_it_is_abandoned_after_the_grace(consumer_logs):
    started, release = threading.Event(), threading.Event()

    def handler(message, ctx):
        started.set()
        release.wait(20)  # never looks at ctx.cancelled

    h, store = harness(handler, worker={"cancel_grace_s": 0.2})
    h.send(envelope(job_id=JOB))
    try:
        cancel_while_running(h, store, started)
        assert not release.is_set()  # its thread still runs: abandoned, not waited for
        assert_cancelled(h, store)
        assert h.consumer.abandoned_threads == 1
        (line,) = events(consumer_logs, "job.abandoned")
        assert line.grace_s == 0.2
    finally:
        release.set()


def test_a_handler_that_raises_job_cancelled_itself_cancels_its_job():
    h, store = harness(lambda message, ctx: (_ for _ in ()).throw(JobCancelled("user left")))
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the delete")

    h.run(scenario)
    assert_cancelled(h, store)


def test_a_request_before_the_handler_starts_stops_it_at_its_first_check():
    """Told between the claim and the start (the renewal ran first): ``ctx.cancelled`` is
    already set when the handler begins."""
    seen = []

    def handler(message, ctx):
        seen.append(ctx.cancelled)
        ctx.raise_if_cancelled()
        raise PermanentError("must not get here")

    h, store = harness(handler)

    async def scenario(consumer):
        real = consumer.ledger.claim

        async def claim_then_request(item):
            result = await real(item)
            store.request_cancel(JOB, now())
            await consumer.ledger.renew()
            return result

        consumer.ledger.claim = claim_then_request
        h.send(envelope(job_id=JOB))
        h.sqs.wake()
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the delete")

    h.run(scenario)
    assert seen == [True]
    assert_cancelled(h, store)
