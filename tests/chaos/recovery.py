"""What a chaos run measures beside the ledger: recovery after a kill, store writes per job.

- ``recoveries(kills, records)``: for every SIGKILL of a poller that was running a job
  (its ``message.started`` logged by that pid, nothing settled by it since), the seconds
  from the kill to the job's next ``message.started`` (by any poller or daemon) and to its
  completion (``job.completed`` / ``message.succeeded``). Needs the daemon's DEBUG log.
- ``count_store_writes(path)`` / ``store_writes(path, job_ids)``: SQLite triggers on the
  job table count every insert and update of a job document (claims, lease renewals,
  settles, rescues; content documents are not counted), in a table of the test's own.

Pure functions of what the run collected, besides the two SQLite calls.
"""

from __future__ import annotations

import sqlite3
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

SETTLED_BY_HOLDER = frozenset({"message.succeeded", "message.retried", "message.dead_lettered",
                               "message.released", "message.resent", "job.completed",
                               "job.already_completed"})
DONE = frozenset({"job.completed", "message.succeeded"})
WRITES_TABLE = "chaos_job_writes"


def when(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(record["time"])
    except (KeyError, TypeError, ValueError):
        return None


def running_at(kill_at: datetime, pid: int, records: list[dict[str, Any]]) -> set[str]:
    """The jobs the poller ``pid`` had started and not settled by ``kill_at``."""
    running: set[str] = set()
    for record in records:
        at, job = when(record), record.get("job_id")
        if record.get("pid") != pid or not job or at is None or at > kill_at:
            continue
        if record.get("event") == "message.started":
            running.add(job)
        elif record.get("event") in SETTLED_BY_HOLDER:
            running.discard(job)
    return running


def spread_s(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "min": round(min(values), 2),
            "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def recoveries(kills: list[tuple[datetime, int]], records: list[dict[str, Any]]
               ) -> dict[str, Any]:
    """Recovery after each kill that cut a running job off (see the module docstring)."""
    timed = sorted((r for r in records if when(r) is not None and r.get("job_id")),
                   key=when)
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in timed:
        by_job[record["job_id"]].append(record)
    to_running: list[float] = []
    to_done: list[float] = []
    never_rerun = 0  # not started again: it had finished, its lines lost with the poller
    found_done = 0  # ... and a later delivery found it completed (job.already_completed)
    cut_off = 0
    for kill_at, pid in kills:
        for job in running_at(kill_at, pid, timed):
            cut_off += 1
            later = [r for r in by_job[job] if when(r) > kill_at]
            started = next((r for r in later if r.get("event") == "message.started"), None)
            done = next((r for r in later if r.get("event") in DONE), None)
            if started is None:
                never_rerun += 1
                found_done += any(r.get("event") == "job.already_completed" for r in later)
            else:
                to_running.append((when(started) - kill_at).total_seconds())
            if done is not None:
                to_done.append((when(done) - kill_at).total_seconds())
    return {"kills": len(kills), "jobs_cut_off": cut_off, "not_run_again": never_rerun,
            "not_run_again_found_completed": found_done,
            "to_running_again_s": spread_s(to_running), "to_completion_s": spread_s(to_done)}


def count_store_writes(path: Path) -> None:
    """Add triggers counting every write of a job document to the SQLite store at ``path``
    (its ``jobs`` table must exist: call after the store was opened once)."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {WRITES_TABLE} (job_id TEXT)")
        for kind in ("INSERT", "UPDATE"):
            conn.execute(
                f"CREATE TRIGGER IF NOT EXISTS {WRITES_TABLE}_{kind.lower()} AFTER {kind} "
                f"ON jobs BEGIN INSERT INTO {WRITES_TABLE} (job_id) VALUES (NEW.id); END")
    finally:
        conn.close()


def store_writes(path: Path, job_ids: list[str]) -> dict[str, float]:
    """Job-document writes per job of ``job_ids``: mean, p50, max, total."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        counts = dict(conn.execute(
            f"SELECT job_id, COUNT(*) FROM {WRITES_TABLE} GROUP BY job_id").fetchall())
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    values = sorted(counts.get(job, 0) for job in job_ids)
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 1), "p50": values[len(values) // 2],
            "max": values[-1], "total": sum(values)}
