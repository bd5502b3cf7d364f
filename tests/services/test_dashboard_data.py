"""The daemon's side of the dashboard's data: the per-minute buckets a poller writes
(services/metrics.py: one store call per interval, never per message), the fleet reporter
(services/fleet.py) and BacklogPerInstance."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from tests.fakes import make_settings
from tests.support.jobstore import RecordingStore
from vip_worker import liveness, statusfile
from vip_worker.plugins.context import STORE, PollerContext
from vip_worker.poller import Poller
from vip_worker.services import metrics
from vip_worker.services.fleet import FleetReporter, state_of
from vip_worker.testing import MemoryStore, capture_logs

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def counts(**outcomes: int) -> metrics.QueueMetrics:
    found = metrics.QueueMetrics()
    for outcome, n in outcomes.items():
        for _ in range(n):
            found.record(outcome, 0.5 if outcome != "deferred" else None)
    return found


# -- buckets -----------------------------------------------------------------------------


def test_an_intervals_counts_and_depths_become_one_row_per_queue():
    taken = {"a": counts(succeeded=3, retried=1, dead_lettered=2, deferred=4),
             "b": metrics.QueueMetrics(), "c": counts(succeeded=1)}
    depths = {"a": {"visible": 7, "inflight": 2, "delayed": 0, "dlq": 1},
              "d": {"visible": 0, "inflight": 0, "delayed": 0}}
    rows = {r.labels["queue"]: r for r in metrics.minute_rows(taken, depths, NOW)}
    assert sorted(rows) == ["a", "c", "d"]  # b: nothing counted, no depth read
    assert rows["a"].incs == {"succeeded": 3, "failed": 3, "retried": 1, "dead_lettered": 2,
                              "deferred": 4, "duration_s_sum": 3.0, "duration_n": 6}
    assert rows["a"].maxes == {"visible": 7, "inflight": 2, "delayed": 0, "dlq": 1}
    assert rows["d"].incs == {} and rows["c"].maxes == {}
    assert {r.series for r in rows.values()} == {"queue"} and rows["a"].minute == NOW


def test_durations_are_summed_beyond_the_sampled_values():
    many = counts(succeeded=metrics.SAMPLES_MAX + 50)
    assert len(many.times_ms) == metrics.SAMPLES_MAX
    assert (many.duration_n, many.duration_s_sum) == (metrics.SAMPLES_MAX + 50,
                                                      0.5 * (metrics.SAMPLES_MAX + 50))


def poller_with_store(store, **values) -> Poller:
    settings = make_settings(metrics_interval_s=60.0, **values)
    poller = Poller(settings, 1, [0.0] * liveness.SIZE)
    poller.context = PollerContext(1, settings)
    poller.context.provide(STORE, lambda: store)
    return poller


def test_a_poller_writes_its_buckets_in_one_store_call_per_interval_not_per_message():
    store = RecordingStore(MemoryStore())
    poller = poller_with_store(store)
    consumer = SimpleNamespace(queue_metrics={"work": metrics.QueueMetrics()})
    for _ in range(50):
        consumer.queue_metrics["work"].record("succeeded", 0.01)
    consumer.queue_metrics["work"].record("dead_lettered", 0.01)
    poller.emit_metrics(consumer, depths={})
    poller.minutes.pending.result(timeout=10)
    assert store.calls == ["bump_minutes"]
    poller.emit_metrics(consumer, depths={})  # nothing new, no depth: no write
    assert store.calls == ["bump_minutes"]
    [bucket] = store.read_minutes("queue", NOW - timedelta(minutes=2))
    assert (bucket["succeeded"], bucket["failed"], bucket["dead_lettered"]) == (50, 1, 1)
    asyncio.run(poller.minutes.finish(5))


def test_no_store_turns_the_buckets_off_once_and_an_outage_is_logged():
    writer = metrics.MinuteWriter(lambda: PollerContext(0, None).store)  # no "store"
    row = metrics.minute_rows({"q": counts(succeeded=1)}, {}, NOW)
    with capture_logs("vip_worker.metrics") as logs:
        writer.write(row).result(timeout=10)
        assert writer.write(row) is None
        store = RecordingStore(MemoryStore())
        store.failing.add("bump_minutes")
        failing = metrics.MinuteWriter(lambda: store)
        failing.write(row).result(timeout=10)  # does not raise
    assert len(logs.events("metrics.store_off")) == 1
    assert logs.events("metrics.store_failed")[0].rows == 1
    writer.close()
    failing.close()


class DepthSqs:
    def __init__(self):
        self.calls = []

    async def queue_attributes(self, url, names):
        self.calls.append((url, tuple(names)))
        if url.endswith("-dlq"):
            return {"ApproximateNumberOfMessages": "4"}
        return {"ApproximateNumberOfMessages": "10", "ApproximateNumberOfMessagesNotVisible": "3",
                "ApproximateNumberOfMessagesDelayed": "1"}


def test_depths_are_one_attributes_call_per_queue_and_one_per_dlq():
    sqs = DepthSqs()
    queues = [SimpleNamespace(name="a", url="https://sqs.example/q/a"),
              SimpleNamespace(name="b", url="https://sqs.example/q/b")]
    depths = asyncio.run(metrics.read_depths(sqs, queues, {"a": "https://sqs.example/q/a-dlq",
                                                           "b": None}))
    assert depths == {"a": {"visible": 10, "inflight": 3, "delayed": 1, "dlq": 4},
                      "b": {"visible": 10, "inflight": 3, "delayed": 1}}
    assert len(sqs.calls) == 3


def test_backlog_per_instance_is_the_backlog_over_the_live_daemons():
    depths = {"a": {"visible": 10, "inflight": 3}, "b": {"visible": 2, "inflight": 0}}
    fields = metrics.backlog_fields("VipTest", depths, live_daemons=3, now_ms=1)
    assert (fields["BacklogPerInstance"], fields["Backlog"], fields["LiveDaemons"]) == (
        5.0, 15, 3)
    spec = fields["aws_emf"]["CloudWatchMetrics"][0]
    assert spec["Dimensions"] == [[]] and spec["Metrics"] == [
        {"Name": "BacklogPerInstance", "Unit": "Count"}]
    assert metrics.backlog_fields("V", depths, 0)["BacklogPerInstance"] == 15  # never / 0


# -- the fleet reporter ------------------------------------------------------------------


def write_status(run_dir, stopping=None, stop_reason=None):
    pollers = [{"index": 0, "pid": 11, "in_flight": 2}, {"index": 1, "pid": 12, "in_flight": 0}]
    statusfile.write(str(run_dir), statusfile.DaemonStatus.build(
        pollers, {}, ["work"], pid=10, written_at=0.0, uptime_s=120.0, target=2,
        generation=1, stopping=stopping, ready=True, rate_per_min=None, rate_window_s=0,
        stop_reason=stop_reason))


def reporter(tmp_path, store):
    settings = make_settings(fleet_report_interval_s=10.0, processes=2)
    return FleetReporter(settings, lambda: store, str(tmp_path), wall=lambda: NOW,
                         hostname="host-a")


def test_each_report_is_one_upsert_of_the_status_files_view(tmp_path):
    store = RecordingStore(MemoryStore())
    fleet = reporter(tmp_path, store)
    write_status(tmp_path)
    assert asyncio.run(fleet.report()) is True
    assert store.calls == ["report_daemon"]
    [record] = store.daemons()
    assert record["daemonId"] == fleet.daemon_id and record["hostname"] == "host-a"
    assert (record["pollers"], record["inflight"], record["state"], record["intervalS"]) == (
        2, [2, 0], "running", 10.0)
    assert record["startedAt"] == NOW - timedelta(seconds=120) and record["lastSeen"] == NOW
    fleet.close()


def test_states_from_the_master_and_the_drain():
    assert state_of(None, False) == "running"
    assert state_of({"stopping": None}, True) == "draining"
    assert state_of({"stopping": "graceful", "stop_reason": "signal"}, False) == "draining"
    assert state_of({"stopping": "graceful", "stop_reason": "spot_interruption"},
                    False) == "spot_notice"


def test_a_clean_stop_is_reported_stopped_and_a_recycle_is_not(tmp_path):
    store = MemoryStore()
    fleet = reporter(tmp_path, store)
    asyncio.run(fleet.stopping(final=False, timeout_s=5))
    assert store.daemons()[0]["state"] == "draining"
    asyncio.run(fleet.stopping(final=True, timeout_s=5))
    [record] = store.daemons()
    assert (record["state"], record["inflight"]) == ("stopped", [])  # no status.json: []
    fleet.close()


def test_live_daemons_leave_out_the_lost_and_the_stopped(tmp_path):
    store = MemoryStore()
    fleet = reporter(tmp_path, store)
    asyncio.run(fleet.report())
    base = {"hostname": "h", "pid": 1, "intervalS": 10}
    store.report_daemon("lost", {**base, "state": "running"}, NOW - timedelta(seconds=31))
    store.report_daemon("gone", {**base, "state": "stopped"}, NOW)
    store.report_daemon("peer", {**base, "state": "draining"}, NOW - timedelta(seconds=5))
    assert asyncio.run(fleet.live_daemons()) == 2  # this one and "peer"
    fleet.close()
