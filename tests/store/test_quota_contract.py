"""The quota governor's record on every backend (store/quota.py): the sliding request
window, tokens estimated then corrected, permits in flight and their leases, a user's cap,
the fleet-wide pause, the circuit breaker, and fairness between users."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

from vip_worker.store.quota import QuotaLimits
from vip_worker.store.sqlite import SqliteStore

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
GEN = "generation"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Caller:
    """Acquires with fresh permit ids; remembers them for the reports."""

    def __init__(self, store, limits: QuotaLimits) -> None:
        self.store, self.limits, self.n = store, limits, 0

    def acquire(self, seconds: float, user: str = "u1", tokens: int = 0):
        self.n += 1
        return self.store.acquire_permit(GEN, f"p{self.n}", at(seconds), user=user,
                                         tokens=tokens, limits=self.limits)

    def report(self, grant, seconds: float, outcome: str = "ok", **kwargs) -> None:
        self.store.report_call(GEN, grant.permit, at(seconds), outcome=outcome,
                               limits=self.limits, **kwargs)


def test_no_sliding_60_s_window_holds_more_than_rpm_calls(store):
    limits = QuotaLimits(rpm=5)
    caller = Caller(store, limits)
    granted = []
    for tick in range(0, 400, 3):  # a call asked for every 3 s for 400 s
        seconds = tick / 2
        grant = caller.acquire(seconds)
        if grant.ok:
            granted.append(seconds)
            caller.report(grant, seconds + 0.1)
        else:
            assert grant.reason == "rpm" and grant.retry_at > at(seconds)
    assert max(sum(s <= t < s + 60 for t in granted) for s in granted) == 5
    assert len(granted) >= 5 * 3  # the window slides: not one burst and then nothing


def test_a_refusal_says_when_the_oldest_call_leaves_the_window(store):
    caller = Caller(store, QuotaLimits(rpm=2))
    assert caller.acquire(0).ok and caller.acquire(10).ok
    refused = caller.acquire(20)
    assert (refused.ok, refused.reason, refused.retry_at) == (False, "rpm", at(60))
    assert caller.acquire(60.5).ok


def test_tokens_are_estimated_then_corrected_from_the_reported_usage(store):
    caller = Caller(store, QuotaLimits(tpm=1000))
    first = caller.acquire(0, tokens=600)
    assert first.ok
    assert caller.acquire(1, tokens=600).reason == "tpm"
    caller.report(first, 2, tokens=150)  # the service used fewer than estimated
    assert caller.acquire(3, tokens=600).ok
    assert [e["k"] for e in store.quota_record(GEN)["log"]] == [150, 600]


def test_a_call_alone_in_the_window_passes_whatever_its_estimate(store):
    caller = Caller(store, QuotaLimits(tpm=100))
    assert caller.acquire(0, tokens=5000).ok


def test_permits_in_flight_are_capped_and_expire_with_a_dead_poller(store):
    caller = Caller(store, QuotaLimits(concurrency=1, lease_s=100))
    held = caller.acquire(0)
    assert held.ok
    busy = caller.acquire(1)
    assert (busy.reason, busy.retry_at) == ("concurrency", at(6))
    caller.report(held, 2)
    orphan = caller.acquire(3)  # its poller dies: never reported
    assert orphan.ok and caller.acquire(50).reason == "concurrency"
    assert caller.acquire(104).ok  # the lease ran out


def test_one_user_cannot_hold_more_than_user_max_inflight(store):
    caller = Caller(store, QuotaLimits(user_max_inflight=2))
    assert caller.acquire(0, "bulk").ok and caller.acquire(1, "bulk").ok
    assert caller.acquire(2, "bulk").reason == "user_inflight"
    assert caller.acquire(3, "single").ok


def test_a_throttled_call_pauses_the_provider_for_everyone(store):
    limits = QuotaLimits(rpm=100)
    caller, other = Caller(store, limits), Caller(store, limits)
    grant = caller.acquire(0)
    caller.report(grant, 1, outcome="throttled", retry_after_s=10)
    refused = other.acquire(2, "another-user")
    assert (refused.reason, refused.retry_at, refused.paused_until) == ("paused", at(11),
                                                                        at(11))
    shorter = caller.acquire(3)
    assert shorter.ok is False
    other.report(shorter, 4, outcome="throttled", retry_after_s=1)  # never shortens it
    assert store.quota_record(GEN)["pausedUntil"] == at(11).timestamp()
    assert other.acquire(11.5).ok


def test_repeated_failures_open_the_breaker_then_probes_close_it(store):
    limits = QuotaLimits(breaker_failures=3, breaker_cooldown_s=30, breaker_probes=1)
    caller = Caller(store, limits)
    for n in range(3):
        caller.report(caller.acquire(n), n + 0.5, outcome="error")
    refused = caller.acquire(5)
    assert (refused.reason, refused.retry_at, refused.breaker) == ("breaker_open", at(32.5),
                                                                   "open")
    probe = caller.acquire(33)  # open -> half_open: one probe at a time
    assert probe.ok and probe.breaker == "half_open"
    assert caller.acquire(34).reason == "breaker_half_open"
    caller.report(probe, 35, outcome="error")  # the probe failed: open again
    assert caller.acquire(36).reason == "breaker_open"
    probe = caller.acquire(66)
    assert probe.ok
    caller.report(probe, 67)  # the probe succeeded: closed
    assert store.quota_record(GEN)["breaker"]["state"] == "closed"
    assert caller.acquire(68).ok and caller.acquire(69).ok


def test_successes_reset_the_failure_count(store):
    caller = Caller(store, QuotaLimits(breaker_failures=2))
    caller.report(caller.acquire(0), 1, outcome="error")
    caller.report(caller.acquire(2), 3)
    caller.report(caller.acquire(4), 5, outcome="error")
    assert caller.acquire(6).breaker == "closed"


def test_when_places_are_short_the_user_with_fewer_recent_calls_goes_first(store):
    caller = Caller(store, QuotaLimits(rpm=100, concurrency=2))
    first, second = caller.acquire(0, "bulk"), caller.acquire(1, "bulk")
    assert first.ok and second.ok
    assert caller.acquire(2, "single").reason == "concurrency"  # "single" now waits
    caller.report(first, 3)
    # One place is free: "single" (no call yet) waits, "bulk" (2 calls) gives way.
    assert caller.acquire(4, "bulk").reason == "fair_share"
    assert caller.acquire(5, "single").ok
    caller.report(second, 6)
    assert caller.acquire(7, "bulk").ok  # nobody with fewer calls waits any more


def test_a_user_at_its_own_cap_holds_no_place_for_itself(store):
    caller = Caller(store, QuotaLimits(concurrency=2, user_max_inflight=1))
    for n in range(3):  # "busy" made three calls in the window, all ended
        caller.report(caller.acquire(n, "busy"), n + 0.5)
    assert caller.acquire(4, "capped").ok
    assert caller.acquire(5, "capped").reason == "user_inflight"  # not waiting for a place
    # One place is free and the only other asker cannot take it: "busy" gets it.
    assert caller.acquire(6, "busy").ok


def test_an_unknown_outcome_is_refused(store):
    import pytest

    with pytest.raises(ValueError, match="outcome"):
        store.report_call(GEN, "p", T0, outcome="fine", limits=QuotaLimits())


# -- several processes on one SQLite file ------------------------------------------------


def acquire_many(path: str, worker: int, count: int, results) -> None:
    store = SqliteStore(path)
    limits = QuotaLimits(rpm=50)
    granted = 0
    for n in range(count):
        if store.acquire_permit(GEN, f"w{worker}-{n}", at(1), limits=limits).ok:
            granted += 1
    store.close()
    results.put(granted)


def test_processes_sharing_one_sqlite_file_never_grant_more_than_the_limit(tmp_path):
    path = str(tmp_path / "jobs.sqlite3")
    SqliteStore(path).close()  # the schema first
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=acquire_many, args=(path, w, 30, results)) for w in range(4)]
    for proc in procs:
        proc.start()
    try:
        granted = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert sum(granted) == 50  # 120 asks at one instant: exactly the limit
    assert len(SqliteStore(path).quota_record(GEN)["log"]) == 50


def test_with_calls_longer_than_the_window_what_a_user_holds_still_counts(store):
    """5-minute calls: the bulk user's starts leave the 60 s window long before its calls
    end; its held permits keep it behind a user who holds none."""
    caller = Caller(store, QuotaLimits(concurrency=2))
    first, second = caller.acquire(0, "bulk"), caller.acquire(1, "bulk")
    assert first.ok and second.ok
    assert caller.acquire(295, "single").reason == "concurrency"  # asks every few seconds
    caller.report(first, 300)
    assert caller.acquire(301, "bulk").reason == "fair_share"  # it still holds one call
    assert caller.acquire(302, "single").ok
