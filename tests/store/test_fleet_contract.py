"""The fleet registry (``store/fleet.py``) on every backend: one upsert per report, the
records read back, and the one "lost" rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.store_writes import counted_writes
from vip_worker.store.fleet import is_lost, live

# Recent: the registry's TTL index (MongoDB, mongomock) expires old records.
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def record(**fields):
    return {"hostname": "host-a", "pid": 101, "version": "1.2.3", "pollers": 2,
            "inflight": [1, 0], "startedAt": NOW - timedelta(hours=1), "state": "running",
            "intervalS": 10, **fields}


def test_a_report_is_one_upsert_and_reads_back(store):
    with counted_writes(store) as writes:
        store.report_daemon("host-a:101", record(), NOW)
    assert writes.count == 1, writes.calls
    [found] = store.daemons()
    assert found == {**record(), "daemonId": "host-a:101", "lastSeen": NOW}
    with counted_writes(store) as writes:
        store.report_daemon("host-a:101", record(inflight=[3, 2], state="draining"),
                            NOW + timedelta(seconds=10))
    assert writes.count == 1
    [found] = store.daemons()
    assert (found["inflight"], found["state"], found["lastSeen"]) == (
        [3, 2], "draining", NOW + timedelta(seconds=10))


def test_every_daemon_is_listed(store):
    store.report_daemon("host-b:7", record(hostname="host-b", pid=7), NOW)
    store.report_daemon("host-a:9", record(pid=9), NOW)
    store.report_daemon("host-a:101", record(), NOW)
    assert [d["daemonId"] for d in store.daemons()] == ["host-a:9", "host-a:101", "host-b:7"]


def test_a_bad_report_names_the_field(store):
    with pytest.raises(ValueError, match="state 'asleep'"):
        store.report_daemon("d", record(state="asleep"), NOW)
    with pytest.raises(ValueError, match="daemon_id"):
        store.report_daemon("", record(), NOW)
    assert store.daemons() == []


def test_lost_after_three_intervals_without_a_report():
    seen = record(lastSeen=NOW)
    assert not is_lost(seen, NOW + timedelta(seconds=30))
    assert is_lost(seen, NOW + timedelta(seconds=31))
    assert not is_lost({**seen, "intervalS": 60}, NOW + timedelta(seconds=179))
    assert not is_lost({**seen, "state": "stopped"}, NOW + timedelta(days=1))  # said goodbye
    assert is_lost({"state": "running"}, NOW)  # never seen


def test_live_daemons_are_neither_lost_nor_stopped():
    # The one count behind BacklogPerInstance (services/fleet.py) and the fleet page.
    def daemon(name, **fields):
        return record(**{"daemonId": name, "lastSeen": NOW, **fields})

    records = [daemon("running"), daemon("draining", state="draining"),
               daemon("spot", state="spot_notice"), daemon("stopped", state="stopped"),
               daemon("silent", lastSeen=NOW - timedelta(seconds=31)),
               daemon("silent-draining", state="draining",
                      lastSeen=NOW - timedelta(seconds=31)),
               daemon("slow", intervalS=60, lastSeen=NOW - timedelta(seconds=100))]
    assert [r["daemonId"] for r in live(records, NOW)] == [
        "running", "draining", "spot", "slow"]
    assert live([], NOW) == []


def test_mongodb_expires_records_by_a_ttl_index(mongo_backend):
    mongo_backend.new_store()
    indexes = mongo_backend.db["daemons"].index_information()
    assert [i["key"] for i in indexes.values() if "expireAfterSeconds" in i] == [
        [("lastSeen", 1)]]
