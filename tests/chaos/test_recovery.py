"""The chaos run's recovery figures, on crafted log records (no daemon)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.chaos.recovery import count_store_writes, recoveries, store_writes

pytestmark = pytest.mark.chaos
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def line(at_s, pid, job, event):
    return {"time": (T0 + timedelta(seconds=at_s)).isoformat(), "pid": pid, "job_id": job,
            "event": event}


def test_recovery_is_timed_from_the_kill_for_the_jobs_the_poller_was_running():
    records = [
        line(0.0, 1, "a", "message.started"),
        line(0.2, 1, "b", "message.started"),
        line(0.4, 1, "b", "message.succeeded"),  # settled before the kill: not cut off
        line(0.5, 2, "c", "message.started"),  # another poller's
        line(0.8, 1, "d", "message.started"),  # finished, its lines lost with the poller
        line(7.0, 2, "a", "message.started"),
        line(9.0, 2, "a", "job.completed"),
        line(8.0, 2, "d", "job.already_completed"),
    ]
    got = recoveries([(T0 + timedelta(seconds=1), 1)], records)
    assert got["jobs_cut_off"] == 2 and got["not_run_again"] == 1
    assert got["not_run_again_found_completed"] == 1
    assert got["to_running_again_s"] == {"n": 1, "min": 6.0, "median": 6.0, "max": 6.0}
    assert got["to_completion_s"]["max"] == 8.0


def test_store_writes_are_counted_per_job(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, doc TEXT)")
    count_store_writes(path)
    conn.execute("INSERT INTO jobs VALUES ('a', '1')")
    conn.execute("INSERT INTO jobs VALUES ('a', '2') ON CONFLICT(id) DO UPDATE SET doc = '2'")
    conn.execute("UPDATE jobs SET doc = '3' WHERE id = 'a'")
    conn.close()
    assert store_writes(path, ["a", "b"]) == {"mean": 1.5, "p50": 3, "max": 3, "total": 3}
