"""The ledger's progress writes are best effort: an error that is not an outage does not
end ``Ledger.run`` (the poller would fail), and a slow write never holds back the lease
renewal of the held jobs."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from tests.fakes import wait_until
from tests.support.jobstore import events, tracked_harness
from tests.support.sqs import envelope

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


def held_job(progress_many):
    """A harness whose handler waits on ``gate``, its store's ``progress_many`` replaced."""
    gate = asyncio.Event()

    async def handler(message, ctx):
        await gate.wait()

    h, store = tracked_harness(handler)
    store.progress_many = progress_many
    h.send(envelope(job_id=JOB))
    return h, store, gate


def run_ledger(h, gate, until, what):
    async def scenario(consumer):
        ledger = consumer.ledger
        await wait_until(lambda: len(ledger.claimed) == 1, what="the claim")
        ledger.interval_s, ledger.progress_interval_s = 0.01, 0.01
        ledger.note_progress(JOB, None, 40, "Generating content...", False)
        task = asyncio.create_task(ledger.run())
        try:
            await wait_until(lambda: until(ledger) or task.done(), what=what)
            return task.done(), ledger.renewals
        finally:
            task.cancel()
            gate.set()
            await wait_until(lambda: h.idle(), what="the handler")

    return h.run(scenario)


def test_a_progress_write_error_is_logged_and_the_renewals_go_on(consumer_logs):
    failed = threading.Event()

    def progress_many(updates, now):
        failed.set()
        raise ValueError("a bug in the store")

    h, store, gate = held_job(progress_many)
    ended, renewals = run_ledger(
        h, gate, lambda ledger: failed.is_set() and ledger.renewals >= 3,
        "a failed progress write, then renewals")
    assert not ended and renewals >= 3
    (record,) = events(consumer_logs, "ledger.progress_failed")
    assert record.count == 1 and "ValueError" in record.error


def test_a_slow_progress_write_does_not_hold_back_the_renewals():
    release, entered = threading.Event(), threading.Event()

    def progress_many(updates, now):
        entered.set()
        release.wait(20)  # the store hangs; the test releases it
        return len(updates)

    h, store, gate = held_job(progress_many)
    try:
        ended, renewals = run_ledger(
            h, gate, lambda ledger: entered.is_set() and ledger.renewals >= 3,
            "renewals while a progress write hangs")
    finally:
        release.set()
    assert not ended and renewals >= 3


def test_the_handlers_own_step_drops_the_pending_streamed_progress():
    from vip_worker.ledger import PROGRESS_SINK

    wrote, gate = threading.Event(), threading.Event()

    def handler(message, ctx):  # a stream's 60 % is pending when the handler saves
        ctx.resources[PROGRESS_SINK](ctx.job_id, ctx.delivery, 60,
                                     "Writing... 600 of 1000 words", False)
        ctx.progress(80, "Saving content...")
        wrote.set()
        gate.wait(20)

    h, store = tracked_harness(handler)
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        try:
            await wait_until(wrote.is_set, what="the handler's own step")
            pending = JOB in consumer.ledger.pending_progress
            await consumer.ledger.flush_progress()
            job = store.get_job(JOB)
            return pending, job["progress"], job["message"]
        finally:
            gate.set()
            await wait_until(lambda: h.idle(), what="the handler")

    assert h.run(scenario) == (False, 80, "Saving content...")


def run_job_harness(generate):
    from vip_worker.pipeline.runner import run_job

    return tracked_harness(lambda message, ctx: run_job(message, ctx, generate, "content"))


def test_a_quota_deferral_writes_no_progress_and_no_timeline_step():
    from vip_worker.errors import Deferred

    def generate():  # refused at once, as ctx.quota does
        raise Deferred("quota:generation:rpm", 30.0)

    h, store = run_job_harness(generate)
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        await wait_until(lambda: store.calls_to("release") == 1 and h.idle(),
                         what="the deferral")
        await consumer.ledger.flush_progress()

    h.run(scenario)
    job = store.get_job(JOB)
    assert (job["status"], job["attempts"]) == ("queued", 0)
    # The docs' "store calls per deferral": the claim and the release (no progress write).
    assert [c for c in store.calls if c != "get_job"] == ["claim", "release"]
    assert [e for e in job["history"] if e["event"] == "progress"] == []


def test_a_running_generation_shows_its_first_step_with_the_next_batch():
    started, gate = threading.Event(), threading.Event()

    def generate():
        started.set()
        gate.wait(20)
        return {"title": "T", "content": "words"}

    h, store = run_job_harness(generate)
    h.send(envelope(job_id=JOB))

    async def scenario(consumer):
        try:
            await wait_until(started.is_set, what="the generation call")
            await consumer.ledger.flush_progress()
            job = store.get_job(JOB)
            return job["progress"], job["message"]
        finally:
            gate.set()
            await wait_until(lambda: h.idle(), what="the handler")

    assert h.run(scenario) == (10, "Generating content...")
