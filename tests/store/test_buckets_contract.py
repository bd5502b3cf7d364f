"""Per-minute buckets (``store/buckets.py``) on every backend: ``bump_minutes`` sums incs,
keeps the largest max, is ONE store write per call, and ``read_minutes`` reads a window
oldest first, filtered by labels; SQLite's prune keeps ``metrics_retention_h`` hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.store_writes import counted_writes
from vip_worker.store.buckets import MinuteRow
from vip_worker.store.sqlite import SqliteStore

# Recent, not a fixed date: MongoDB's TTL index (and mongomock's) expires old buckets.
NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


def minute(n: int) -> datetime:
    return NOW + timedelta(minutes=n)


def queue_row(queue: str, n: int, **incs: float) -> MinuteRow:
    return MinuteRow("queue", {"queue": queue}, minute(n), incs)


def test_a_row_is_floored_to_its_minute_and_checked():
    row = MinuteRow("queue", {"queue": "q"}, NOW + timedelta(seconds=59.9), {"succeeded": 1})
    assert row.minute == NOW
    with pytest.raises(ValueError, match="'visible'"):
        MinuteRow("queue", {}, NOW, {"visible": 1}, {"visible": 2})
    with pytest.raises(ValueError, match="'failed'"):
        MinuteRow("queue", {}, NOW, {"failed": float("nan")})
    with pytest.raises(ValueError, match="'series'"):
        MinuteRow("queue", {}, NOW, {"series": 1})


def test_incs_are_summed_and_maxes_kept_at_their_largest(store):
    store.bump_minutes([MinuteRow("queue", {"queue": "a"}, minute(0) + timedelta(seconds=5),
                                  {"succeeded": 2, "duration_s_sum": 1.5}, {"visible": 7})])
    store.bump_minutes([MinuteRow("queue", {"queue": "a"}, minute(0) + timedelta(seconds=40),
                                  {"succeeded": 1, "failed": 1}, {"visible": 3})])
    [bucket] = store.read_minutes("queue", minute(0))
    assert bucket == {"series": "queue", "labels": {"queue": "a"}, "minute": minute(0),
                      "succeeded": 3, "failed": 1, "duration_s_sum": 1.5, "visible": 7}
    assert bucket["minute"].utcoffset() == timedelta(0)


def test_one_write_per_call_however_many_rows(store):
    rows = [queue_row(q, n, succeeded=1) for q in ("a", "b", "c") for n in range(4)]
    store.bump_minutes(rows[:1])  # the first call may prune; count a later one
    with counted_writes(store) as writes:
        store.bump_minutes(rows)
    assert writes.count == 1, writes.calls
    with counted_writes(store) as writes:
        store.bump_minutes([])
    assert writes.count == 0
    assert len(store.read_minutes("queue", minute(0))) == 12


def test_read_minutes_window_order_and_labels(store):
    store.bump_minutes([queue_row("b", 1, succeeded=1), queue_row("a", 1, succeeded=2),
                        queue_row("a", 0, succeeded=3), queue_row("a", 5, succeeded=4),
                        MinuteRow("usage", {"type": "articles", "user": "u1", "model": "m"},
                                  minute(1), {"tokens_in": 10})])
    found = store.read_minutes("queue", minute(0), until=minute(5))
    assert [(b["minute"], b["labels"]["queue"]) for b in found] == [
        (minute(0), "a"), (minute(1), "a"), (minute(1), "b")]
    only_a = store.read_minutes("queue", minute(0), labels={"queue": "a"})
    assert [b["succeeded"] for b in only_a] == [3, 2, 4]
    usage = store.read_minutes("usage", minute(0), labels={"user": "u1"})
    assert [(b["labels"], b["tokens_in"]) for b in usage] == [
        ({"type": "articles", "user": "u1", "model": "m"}, 10)]
    assert store.read_minutes("usage", minute(0), labels={"user": "u2"}) == []
    assert store.read_minutes("nothing", minute(0)) == []


def test_labels_tell_buckets_apart_whatever_their_order(store):
    store.bump_minutes([MinuteRow("usage", {"type": "t", "user": "u"}, minute(0), {"calls": 1})])
    store.bump_minutes([MinuteRow("usage", {"user": "u", "type": "t"}, minute(0), {"calls": 1})])
    [bucket] = store.read_minutes("usage", minute(0))
    assert bucket["calls"] == 2


def test_mongodb_keeps_buckets_by_a_ttl_index(mongo_backend):
    mongo_backend.new_store()
    indexes = mongo_backend.db["metrics_minutes"].index_information()
    ttl = [i for i in indexes.values() if "expireAfterSeconds" in i]
    assert [(i["key"], i["expireAfterSeconds"]) for i in ttl] == [([("minute", 1)], 48 * 3600)]


def test_sqlite_prunes_buckets_older_than_the_retention(tmp_path):
    store = SqliteStore(tmp_path / "jobs.sqlite3", metrics_retention_h=2)
    store.bump_minutes([queue_row("a", -200, succeeded=1), queue_row("a", -100, succeeded=1)])
    store._pruned_at = None  # the next bump is due to prune (at most once per 5 minutes)
    store.bump_minutes([queue_row("a", 0, succeeded=1)])
    assert [b["minute"] for b in store.read_minutes("queue", minute(-300))] == [
        minute(-100), minute(0)]
    store.bump_minutes([queue_row("a", 200, succeeded=1)])  # pruned a moment ago: not yet
    assert len(store.read_minutes("queue", minute(-300))) == 3
    store.close()
