"""The lifeline's sweep (``vip_worker.services.lifeline``) on a fake SQS and an in-memory
job store: what it rescues, what it leaves alone, what it sends, and when it sweeps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from types import SimpleNamespace

import pytest

from tests.fakes import make_settings
from tests.support.lifeline import LEASE_S, QUEUED_AFTER_S, SweepHarness, at, claim
from tests.support.wait import wait_until_async
from vip_worker import liveness
from vip_worker.errors import DependencyUnavailable
from vip_worker.message import parse_envelope
from vip_worker.plugins.context import PollerContext
from vip_worker.poller import Poller
from vip_worker.services import metrics
from vip_worker.services.lifeline import (
    JITTER,
    LEASE_REASON,
    Lifeline,
    dedup_id,
    queued_reason,
    schedule,
    stamp,
)
from vip_worker.testing import MemoryStore

pytestmark = pytest.mark.timeout(30)
LATE = LEASE_S + 60  # seconds after the claim: its lease has run out
STALE = QUEUED_AFTER_S + 60  # seconds after queuing: stale


@pytest.fixture(autouse=True)
def lifeline_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


@pytest.fixture
def store():
    store = MemoryStore()
    yield store
    store.close()


def events(caplog, name):
    return [r for r in caplog.records if r.getMessage() == name]


# -- expired leases ------------------------------------------------------------------


def test_an_orphaned_processing_job_is_resent_once_in_the_apps_envelope(store, caplog):
    h = SweepHarness()
    claim(store)  # its poller died: nothing renews the lease, no message anywhere
    result = h.sweep(store, at(LATE))
    assert (result.resent, result.failed, result.lost_races) == (1, 0, 0)
    (body,) = h.bodies()
    sent = parse_envelope(body)
    assert (sent.job_id, sent.user_id, sent.type, sent.payload, sent.timestamp) == (
        "job-1", "u1", "work", {"topic": "t"}, stamp(at(LATE)))
    assert set(json.loads(body)) == {"jobId", "userId", "type", "timestamp", "payload"}
    job = store.get_job("job-1")
    assert (job["status"], job["rescues"], job["message"], job["leaseUntil"]) == (
        "queued", 1, LEASE_REASON, None)
    (line,) = events(caplog, "job.rescued")
    assert (line.levelname, line.job_id, line.queue, line.attempts, line.outcome,
            line.reason) == ("INFO", "job-1", "work", 1, "resend", LEASE_REASON)
    assert h.rescued == [("work", "resend")]
    # Rescued: the job is queued and fresh, so the next sweep leaves it alone.
    assert h.sweep(store, at(LATE + 30)).resent == 0
    assert len(h.bodies()) == 1


def test_an_orphan_whose_attempts_are_spent_ends_failed_with_the_reason(store, caplog):
    h = SweepHarness(max_attempts=2)
    claim(store, delivery="d1")
    claim(store, delivery="d2", now=at(LATE))  # the second attempt's poller died too
    result = h.sweep(store, at(2 * LATE))
    assert (result.resent, result.failed) == (0, 1)
    assert h.bodies() == []
    job = store.get_job("job-1")
    assert (job["status"], job["error"]) == (
        "failed", f"{LEASE_REASON}; gave up after 2 attempts")
    (line,) = events(caplog, "job.rescued")
    assert (line.outcome, line.attempts, line.dead_lettered) == ("failed", 2, True)
    assert h.rescued == [("work", "failed")]
    # As every failed job: its message in the DLQ with the reason, for `dlq redrive`.
    (copy,) = h.fake.messages(h.dlq_url)
    assert parse_envelope(copy.body).job_id == "job-1"
    assert {name: value["StringValue"] for name, value in copy.attributes.items()} == {
        "vip_error_class": "OrphanedJob", "vip_error": LEASE_REASON, "vip_attempts": "2",
        "vip_source_queue": "work", "vip_source_message_id": "m-d2"}


def test_a_dead_letter_copy_sqs_refuses_leaves_the_job_failed(store, caplog):
    h = SweepHarness(max_attempts=1)
    claim(store)
    h.fake.fail_next("send")
    assert h.sweep(store, at(LATE)).failed == 1
    assert store.get_job("job-1")["status"] == "failed" and h.fake.messages(h.dlq_url) == []
    assert events(caplog, "lifeline.dead_letter_failed")[0].error_code == "ServiceUnavailable"
    assert events(caplog, "job.rescued")[0].dead_lettered is False


def test_a_live_lease_is_left_alone(store):
    h = SweepHarness()
    claim(store)
    assert h.sweep(store, at(LEASE_S - 1)).resent == 0
    assert store.get_job("job-1")["status"] == "processing" and h.bodies() == []


def test_a_job_on_a_queue_this_daemon_does_not_serve_is_left_to_the_daemons_that_do(store):
    # A fleet split by queue shares one store: this daemon must not fail another's jobs.
    h = SweepHarness()
    claim(store, queue="elsewhere")
    sweep = h.sweep(store, at(LATE))
    assert (sweep.failed, sweep.resent, sweep.not_ours) == (0, 0, 1)
    assert h.bodies() == [] and h.fake.messages(h.dlq_url) == []
    assert store.get_job("job-1")["status"] == "processing"


def test_a_job_naming_no_queue_goes_to_the_queue_named_after_its_type(store):
    h = SweepHarness()
    claim(store, queue=None)  # as the app's own documents: no queue recorded
    assert h.sweep(store, at(LATE)).resent == 1
    assert len(h.bodies()) == 1
    claim(store, "job-2", queue=None, type_="poems", delivery="d2")
    # No queue here is named 'poems': a daemon that serves one rescues it.
    assert h.sweep(store, at(2 * LATE)).not_ours == 1
    assert store.get_job("job-2")["status"] == "processing"


def test_a_job_whose_message_the_consumer_would_refuse_is_failed_not_sent(store, caplog):
    h = SweepHarness()
    store.claim("job-1", user_id="", type="work", params={"topic": "t"}, message_id="m1",
                lease_s=LEASE_S, now=at(0), delivery="d1", queue="work")  # no userId
    assert h.sweep(store, at(LATE)).failed == 1
    assert h.bodies() == []
    error = store.get_job("job-1")["error"]
    assert "its message cannot be sent again: field 'userId' must be 1..256" in error


def test_a_job_naming_its_queue_by_url_is_resent_there(store):
    h = SweepHarness()
    claim(store, queue=h.url)
    assert h.sweep(store, at(LATE)).resent == 1 and len(h.bodies()) == 1


def test_a_fifo_queue_gets_the_users_group_and_a_fresh_deduplication_id(store):
    h = SweepHarness(fifo=True)
    claim(store)
    h.sweep(store, at(LATE))
    ((url, body, _, group, dedup, _),) = h.fake.calls_to("send")
    assert (url, group) == (h.url, "u1")
    assert dedup.startswith(hashlib.sha256(b"job-1").hexdigest()) and dedup != "job-1"
    assert len(h.fake.messages(h.url)) == 1


def test_a_long_job_ids_deduplication_ids_still_differ_by_the_rescue_time():
    job = {"_id": "j" * 200}
    first, second = dedup_id(job, at(0)), dedup_id(job, at(1))
    assert first != second and len(first) <= 128 and len(second) <= 128
    assert all(c.isalnum() or c in "-_." for c in first)


# -- stale queued jobs -----------------------------------------------------------------


def test_an_old_queued_job_on_an_empty_queue_is_resent(store, caplog):
    h = SweepHarness()
    store.create_job("job-1", "u1", "work", {"topic": "t"}, at(0), queue="work")
    store.create_job("young", "u1", "work", {}, at(STALE - 120), queue="work")
    result = h.sweep(store, at(STALE))
    assert result.resent == 1
    (body,) = h.bodies()
    assert parse_envelope(body).job_id == "job-1"
    assert store.get_job("job-1")["rescues"] == 1
    assert store.get_job("young")["rescues"] == 0
    assert events(caplog, "job.rescued")[0].reason == queued_reason(QUEUED_AFTER_S)


@pytest.mark.parametrize("state", ["visible", "in_flight", "delayed"])
def test_a_queued_job_behind_a_backlog_is_left_alone(store, caplog, state):
    h = SweepHarness()
    store.create_job("job-1", "u1", "work", {"topic": "t"}, at(0), queue="work")
    h.fake.send(h.url, "another job's message", delay_s=900 if state == "delayed" else 0)
    if state == "in_flight":
        h.fake.receive(h.url, 1, 0, 600)
    result = h.sweep(store, at(STALE))
    assert (result.resent, result.behind_backlog) == (0, 1)
    assert store.get_job("job-1")["rescues"] == 0
    assert len(h.fake.messages(h.url)) == 1
    (line,) = events(caplog, "lifeline.backlog")
    assert (line.levelname, line.queue, line.backlog, line.jobs) == ("DEBUG", "work", 1, 1)
    assert events(caplog, "job.rescued") == []


def test_a_backlog_this_poller_drained_since_the_job_was_queued_is_no_hiding_place(store):
    h = SweepHarness()
    h.drained = {"work": 40}
    sweeper = h.sweeper(store)
    h.sweep(store, at(0), sweeper)  # the poller had taken 40 messages off by then
    store.create_job("job-1", "u1", "work", {"topic": "t"}, at(10), queue="work")
    for i in range(3):
        h.fake.send(h.url, f"other message {i}")  # a backlog of 3 now
    h.drained["work"] = 42  # only 2 taken off since the job was queued: not turned over
    assert h.sweep(store, at(STALE), sweeper).behind_backlog == 1
    h.drained["work"] = 43  # 3 since: the queue turned over while the job waited
    result = h.sweep(store, at(STALE + 30), sweeper)
    sweeper.close()
    assert (result.resent, result.behind_backlog) == (1, 0)
    assert parse_envelope(h.bodies()[-1]).job_id == "job-1"


def test_drained_counts_from_before_the_history_err_towards_waiting(store):
    h = SweepHarness()
    h.drained = {"work": 0}
    sweeper = h.sweeper(store)
    store.create_job("job-1", "u1", "work", {}, at(0), queue="work")
    h.fake.send(h.url, "other message")
    h.drained["work"] = 100  # all before the first sample: unknown when, so not counted
    assert h.sweep(store, at(STALE), sweeper).behind_backlog == 1
    assert sweeper.drained_since("work", at(0)) == 0
    h.drained["work"] = 101
    assert h.sweep(store, at(STALE + 30), sweeper).resent == 1
    sweeper.close()


def test_the_backlog_is_read_once_per_queue_and_only_for_stale_jobs(store):
    h = SweepHarness()
    h.sweep(store, at(STALE))
    assert h.fake.calls_to("queue_attributes") == []  # nothing stale: no SQS call
    for i in range(3):
        store.create_job(f"job-{i}", "u1", "work", {}, at(i), queue="work")
    h.fake.send(h.url, "backlog")
    h.sweep(store, at(STALE))
    assert len(h.fake.calls_to("queue_attributes")) == 1


def test_a_backlog_sqs_would_not_report_counts_as_a_backlog(store, caplog):
    h = SweepHarness()
    store.create_job("job-1", "u1", "work", {}, at(0), queue="work")
    h.fake.fail_next("queue_attributes")
    assert h.sweep(store, at(STALE)).behind_backlog == 1
    assert events(caplog, "lifeline.backlog_unknown")[0].error_code == "ServiceUnavailable"
    assert h.bodies() == []


def test_each_query_is_bounded_by_the_batch(store):
    h = SweepHarness().with_values(lifeline_batch=2)
    for i in range(5):
        claim(store, f"job-{i}", delivery=f"d{i}")
    assert h.sweep(store, at(LATE)).resent == 2
    assert h.sweep(store, at(LATE + 1)).resent == 2


# -- failures ----------------------------------------------------------------------------


class DownStore:
    """A store whose every call fails as an outage does."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise DependencyUnavailable("store down")
        return fail


def test_a_store_outage_is_logged_once_per_sweep_and_tried_again(store, caplog):
    h = SweepHarness()
    claim(store)
    result = h.sweep(DownStore(), at(LATE))
    assert result.store_unavailable and result.resent == 0
    (line,) = events(caplog, "lifeline.store_unavailable")
    assert line.levelname == "WARNING" and "store down" in line.error
    assert h.sweep(store, at(LATE + 30)).resent == 1  # the store is back


def test_a_failed_send_leaves_the_job_queued_for_a_later_sweep(store, caplog):
    h = SweepHarness()
    claim(store)
    h.fake.fail_next("send")
    result = h.sweep(store, at(LATE))
    assert (result.resent, result.send_failed) == (1, 1)
    assert h.bodies() == [] and store.get_job("job-1")["status"] == "queued"
    assert events(caplog, "lifeline.send_failed")[0].job_id == "job-1"
    # The rescue set queuedAt: once that is stale, the empty queue gets it re-sent.
    assert h.sweep(store, at(LATE + STALE)).resent == 1
    assert len(h.bodies()) == 1 and store.get_job("job-1")["rescues"] == 2


class FailsOnce:
    """A store whose first query raises a bug's exception; empty afterwards."""

    def __init__(self) -> None:
        self.sweeps = 0

    def expired_leases(self, now, limit):
        self.sweeps += 1
        if self.sweeps == 1:
            raise RuntimeError("a bug")
        return []

    def stale_queued(self, created_before, limit):
        return []


def test_a_sweep_that_fails_is_logged_and_the_next_one_runs(caplog):
    h = SweepHarness().with_values(lifeline_interval_s=0.01)
    store = FailsOnce()
    sweeper = h.sweeper(store)

    async def main():
        task = asyncio.create_task(sweeper.run(rand=lambda: 0.0))
        await wait_until_async(lambda: store.sweeps >= 2 or task.done(), 5,
                               message="a second sweep")
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    (line,) = events(caplog, "lifeline.sweep_failed")
    assert line.levelname == "ERROR" and line.error == "RuntimeError: a bug"
    assert sweeper.executor is None  # closed when the task ended


def test_without_a_store_the_lifeline_stops(caplog):
    h = SweepHarness().with_values(lifeline_interval_s=0.01)

    def no_store():
        raise LookupError("no resource 'store' is provided in this process")

    sweeper = Lifeline(h.settings, no_store, h.sqs)
    asyncio.run(asyncio.wait_for(sweeper.run(rand=lambda: 0.0), 5))
    assert "no resource 'store'" in events(caplog, "lifeline.off")[0].error
    off = Lifeline(h.settings.with_values(lifeline_interval_s=0.0), no_store, h.sqs)
    asyncio.run(asyncio.wait_for(off.run(), 5))  # 0: off, returns at once
    assert len(events(caplog, "lifeline.off")) == 1


# -- the schedule: jitter -------------------------------------------------------------


def test_the_first_sweep_is_spread_over_one_interval():
    assert next(schedule(30.0, lambda: 0.0)) == 0.0
    assert next(schedule(30.0, lambda: 0.5)) == 15.0


def test_each_wait_is_the_interval_jittered_both_ways():
    for value, expected in ((0.0, 30 * (1 - JITTER)), (0.5, 30.0), (0.999, 30 * 1.2497)):
        waits = schedule(30.0, lambda v=value: v)
        next(waits)
        assert next(waits) == pytest.approx(expected, abs=0.01)


def sweep_times(rand, count=50, interval_s=30.0):
    times, t = [], 0.0
    for _, delay in zip(range(count), schedule(interval_s, rand), strict=False):
        t += delay
        times.append(t)
    return times


def test_two_sweepers_started_together_do_not_sweep_in_lockstep():
    one = sweep_times(random.Random(1).random)
    two = sweep_times(random.Random(2).random)
    gaps = [abs(a - b) for a, b in zip(one, two, strict=True)]
    assert min(gaps) < 30 * 2  # the same cadence...
    # ...but apart: never more than a few sweeps within a second of each other.
    assert sum(gap < 1.0 for gap in gaps) <= 3
    # Sweepers that met at once drift apart within a few sweeps.
    same_start = [sweep_times(random.Random(seed).random) for seed in (3, 4)]
    later = [abs(a - b) for a, b in zip(*same_start, strict=True)][10:]
    assert sum(gap < 1.0 for gap in later) <= 2


def test_the_average_wait_is_the_interval():
    waits = schedule(30.0, random.Random(5).random)
    next(waits)
    average = sum(next(waits) for _ in range(2000)) / 2000
    assert average == pytest.approx(30.0, rel=0.02)


# -- metrics -------------------------------------------------------------------------


def test_rescues_are_a_count_in_the_queues_metric_line():
    counts = metrics.QueueMetrics()
    counts.record("rescued", None)
    assert not counts.empty()
    fields = metrics.emf_fields("VipWorker", "work", counts, None, now_ms=1)
    assert fields["JobsRescued"] == 1
    names = [m["Name"] for m in fields["aws_emf"]["CloudWatchMetrics"][0]["Metrics"]]
    assert "JobsRescued" in names


def test_the_poller_feeds_the_lifeline_its_drained_counts_and_counts_its_rescues():
    settings = make_settings(metrics_interval_s=60.0)
    poller = Poller(settings, 0, [0.0] * liveness.SIZE)
    poller.context = PollerContext(0, settings)
    consumer = SimpleNamespace(queue_metrics={"work": metrics.QueueMetrics()},
                               dlq_urls={"work": "https://sqs.example/q/work-dlq"})
    lifeline = poller.lifeline(consumer)
    counts = consumer.queue_metrics["work"]
    counts.record("succeeded", 0.1)
    counts.record("retried", 0.1)  # back in the queue: not drained
    poller.emit_metrics(consumer, depths={})  # a metric line takes the counts so far
    consumer.queue_metrics["work"].record("dead_lettered", 0.1)
    assert lifeline.drained("work") == 2
    assert lifeline.dlq_urls == {"work": "https://sqs.example/q/work-dlq"}
    lifeline.on_rescue("work", "resend")
    assert consumer.queue_metrics["work"].rescued == 1


# -- the lease grace and the rescue's hold ------------------------------------------------


def test_a_lease_is_rescued_only_a_grace_after_it_ran_out(store):
    h = SweepHarness().with_values(lifeline_lease_grace_s=60.0)
    claim(store)  # lease until at(LEASE_S)
    assert h.sweep(store, at(LEASE_S + 59)).resent == 0  # the holder may only be late
    assert store.get_job("job-1")["status"] == "processing"
    assert h.sweep(store, at(LEASE_S + 61)).resent == 1


def test_a_job_rescued_from_a_recent_lease_is_held_from_the_resent_copy(store):
    h = SweepHarness().with_values(lifeline_lease_grace_s=60.0)
    claim(store)
    assert h.sweep(store, at(LEASE_S + 61)).resent == 1
    job = store.get_job("job-1")
    # Held until the old lease ran out two graces ago.
    assert (job["status"], job["delivery"], job["leaseUntil"]) == (
        "queued", "lifeline", at(LEASE_S + 120))
    copy = claim_result(store, "copy", at(LEASE_S + 100))
    assert (copy.outcome.value, copy.lease_until) == ("busy", at(LEASE_S + 120))
    assert claim_result(store, "copy", at(LEASE_S + 121)).outcome.value == "claimed"


def test_an_old_orphan_gets_no_hold(store):
    h = SweepHarness().with_values(lifeline_lease_grace_s=60.0)
    claim(store)
    assert h.sweep(store, at(LEASE_S + 3600)).resent == 1
    assert store.get_job("job-1")["leaseUntil"] is None


def claim_result(store, delivery, now):
    return store.claim("job-1", user_id="u1", type="work", params={"topic": "t"},
                       message_id=f"m-{delivery}", lease_s=LEASE_S, now=now,
                       delivery=delivery, queue="work")


def test_a_job_waiting_out_a_long_retry_delay_is_not_resent(store):
    h = SweepHarness()
    claim(store)
    store.requeue("job-1", "RetryLater: later", at(10), delivery="d1", delay_s=7200)
    assert h.sweep(store, at(10 + STALE)).resent == 0  # stale by the requeue alone
    assert h.sweep(store, at(7210 + STALE)).resent == 1
