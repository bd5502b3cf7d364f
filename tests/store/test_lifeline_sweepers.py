"""Two daemons' lifelines sweeping one job store at once re-send each orphan exactly once,
on every backend (two stores on one SQLite file; two MongoStores on one mongomock client)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support.lifeline import LEASE_S, QUEUED_AFTER_S, SweepHarness, at, claim
from vip_worker.message import parse_envelope

pytestmark = pytest.mark.timeout(30)


class SeeTogether:
    """A store whose orphan queries wait for the other sweeper's: both see the same
    state before either rescues, the race the compare-and-set must settle."""

    def __init__(self, store, barrier: threading.Barrier) -> None:
        self.store = store
        self.barrier = barrier

    def expired_leases(self, now, limit):
        found = self.store.expired_leases(now, limit)
        self.barrier.wait(10)
        return found

    def stale_queued(self, created_before, limit):
        found = self.store.stale_queued(created_before, limit)
        self.barrier.wait(10)
        return found

    def rescue(self, *args, **kwargs):
        return self.store.rescue(*args, **kwargs)


def sweep_together(harness: SweepHarness, backend, now):
    barrier = threading.Barrier(2)
    sweepers = [harness.sweeper(SeeTogether(backend.new_store(), barrier)) for _ in range(2)]
    harness.now = now

    async def both():
        return await asyncio.gather(*(s.sweep() for s in sweepers))

    try:
        return asyncio.run(both())
    finally:
        for sweeper in sweepers:
            sweeper.close()


def test_two_sweepers_resend_an_expired_lease_once(backend):
    h = SweepHarness()
    store = backend.new_store()
    for i in range(3):
        claim(store, f"job-{i}", delivery=f"d{i}")
    results = sweep_together(h, backend, at(LEASE_S + 60))
    assert sum(r.resent for r in results) == 3
    assert sum(r.lost_races for r in results) == 3  # each orphan: one winner, one loser
    sent = sorted(parse_envelope(body).job_id for body in h.bodies())
    assert sent == ["job-0", "job-1", "job-2"]
    assert all(store.get_job(f"job-{i}")["rescues"] == 1 for i in range(3))


def test_two_sweepers_resend_a_stale_queued_job_once(backend):
    h = SweepHarness()
    store = backend.new_store()
    store.create_job("job-1", "u1", "work", {"topic": "t"}, at(0), queue="work")
    results = sweep_together(h, backend, at(QUEUED_AFTER_S + 60))
    assert sum(r.resent for r in results) == 1
    # The other lost the race, or read the backlog after the winner's send: either way
    # it left the job alone.
    assert sum(r.lost_races + r.behind_backlog for r in results) == 1
    assert len(h.bodies()) == 1
    assert store.get_job("job-1")["rescues"] == 1


def test_two_sweepers_fail_a_spent_orphan_once(backend):
    h = SweepHarness(max_attempts=1)
    store = backend.new_store()
    claim(store)
    results = sweep_together(h, backend, at(LEASE_S + 60))
    assert sum(r.failed for r in results) == 1 and sum(r.lost_races for r in results) == 1
    assert h.bodies() == [] and store.get_job("job-1")["status"] == "failed"
    assert len(h.fake.messages(h.dlq_url)) == 1  # one DLQ copy, by the winner
