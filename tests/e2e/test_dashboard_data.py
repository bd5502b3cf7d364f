"""The dashboard's data written by real daemons against moto: after a small batch the job
store holds "queue" buckets with the batch's succeeded and failed counts, and one fleet
record per daemon, which turns "stopped" when its daemon is TERMed.

Two daemons share one SQLite store (each with its own runtime directory: status.json is
per daemon). Tests wait on the store's contents, never on fixed sleeps.
"""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.sqs import envelope
from vip_worker import config
from vip_worker.store.factory import open_store
from vip_worker.store.fleet import is_lost

pytestmark = pytest.mark.e2e


def send(sqs, url, type_, **payload):
    job_id = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=url, MessageBody=envelope(job_id, type_, payload))
    return job_id


def totals(store, since):
    buckets = store.read_minutes("queue", since, labels={"queue": "work"})
    return {k: sum(b.get(k, 0) for b in buckets) for k in ("succeeded", "failed")}


def test_buckets_and_fleet_records_from_two_daemons(sqs, make_queue, start_daemon, tmp_path):
    urls = make_queue("dash")
    shared = tmp_path / "shared-state"
    since = datetime.now(UTC) - timedelta(minutes=2)
    settings = {"state_dir": str(shared), "metrics_interval_s": 1,
                "fleet_report_interval_s": 1, "lifeline_interval_s": 0, "log_level": "INFO"}
    queues = {"work": {"url": urls["url"], "wait_time_s": 1}}
    first = start_daemon(queues, processes=2, runtime_dir=str(tmp_path / "run-1"), **settings)
    second = start_daemon(queues, processes=1, runtime_dir=str(tmp_path / "run-2"), **settings)
    first.wait_for("poller.ready", count=2, timeout=60)
    second.wait_for("poller.ready", timeout=60)
    for _ in range(4):
        send(sqs, urls["url"], "sleep", seconds=0)
    for _ in range(2):
        send(sqs, urls["url"], "fail")
    store = open_store(config.load(environ={"VIP_WORKER_STATE_DIR": str(shared)},
                                   require_queues=False))
    try:
        first.wait_until(lambda: totals(store, since) == {"succeeded": 4, "failed": 2},
                         timeout=60, what="the batch's counts in the buckets")

        def two_running():
            found = store.daemons()
            running = [d for d in found if d["state"] == "running"]
            return running if len(running) == 2 and len(found) == 2 else None

        records = first.wait_until(two_running, timeout=30, what="two running daemons")
        by_pid = {r["pid"]: r for r in records}
        assert set(by_pid) == {first.pid, second.pid}
        assert by_pid[first.pid]["pollers"] == 2 and by_pid[second.pid]["pollers"] == 1
        first.wait_until(lambda: len(next(d for d in store.daemons()
                                          if d["pid"] == first.pid)["inflight"]) == 2,
                         timeout=30, what="the first daemon's in-flight per poller")
        assert not any(is_lost(r, datetime.now(UTC)) for r in records)

        first.send(signal.SIGTERM)
        assert first.wait_exit(timeout=30) == 0
        states = {d["pid"]: d["state"] for d in store.daemons()}
        assert states[first.pid] == "stopped"
        assert states[second.pid] == "running"
        second.send(signal.SIGTERM)
        assert second.wait_exit(timeout=30) == 0
        assert {d["state"] for d in store.daemons()} == {"stopped"}
    finally:
        store.close()
