"""The fleet page's figures: rows, lost daemons, the backlog per instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vip_worker.web.dashboard import fleet

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def record(host: str, pid: int, *, seen_s: float = 1, state: str = "running",
           interval_s: float = 10, up_s: float = 3700, inflight=(2, 1)) -> dict:
    return {"daemonId": f"{host}-{pid}", "hostname": host, "pid": pid, "version": "0.1.0",
            "pollers": len(inflight), "inflight": list(inflight),
            "startedAt": NOW - timedelta(seconds=up_s),
            "lastSeen": NOW - timedelta(seconds=seen_s), "state": state,
            "intervalS": interval_s}


def test_rows_show_every_field():
    doc = fleet.build([record("web-1", 42)], NOW, backlog=30)
    (row,) = doc["daemons"]
    assert row == {"daemon_id": "web-1-42", "hostname": "web-1", "pid": 42,
                   "version": "0.1.0", "pollers": 2, "inflight": [2, 1], "inflight_total": 3,
                   "uptime": "1 h 1 min", "last_seen": "1 s ago", "state": "running",
                   "lost": False}


def test_a_silent_daemon_is_lost_whatever_it_last_said_and_listed_last():
    doc = fleet.build([record("a", 1, seen_s=31, state="draining"), record("b", 2)], NOW,
                      backlog=10)
    assert [(r["hostname"], r["state"], r["lost"]) for r in doc["daemons"]] == [
        ("b", "running", False), ("a", "lost", True)]
    assert (doc["live"], doc["lost"]) == (1, 1)


def test_backlog_per_instance_counts_live_daemons_as_the_emf_metric_does():
    records = [record("a", 1), record("b", 2), record("c", 3, state="draining"),
               record("d", 4, state="spot_notice"), record("e", 5, seen_s=100),
               record("f", 6, state="stopped")]
    doc = fleet.build(records, NOW, backlog=150)
    assert doc["live"] == 4  # not the lost one, not the stopped one
    assert doc["backlog_per_instance"] == 37.5
    assert doc["backlog_per_instance_text"] == "37.5"


def test_no_live_daemon_or_no_backlog_means_no_figure():
    assert fleet.backlog_per_instance(150, 0) is None
    assert fleet.backlog_per_instance(None, 3) is None
    doc = fleet.build([], NOW, backlog=150)
    assert doc["backlog_per_instance_text"] == "-" and doc["daemons"] == []


def test_missing_times_show_a_dash():
    row = fleet.daemon_row({"daemonId": "x", "state": "running"}, NOW, lost=False)
    assert (row["uptime"], row["last_seen"], row["inflight"]) == ("-", "-", [])


def test_ago_text():
    assert [fleet.ago_text(s) for s in (0, 59, 60, 3599, 7500, 3 * 86400 + 4 * 3600)] == [
        "0 s", "59 s", "1 min", "59 min", "2 h 5 min", "3 d 4 h"]
