"""The dashboard's store reads on a big embedded store, and the fleet reporter's writes.

    python -m bench.dashboard_store [--jobs 100000] [--repeat 200] [--path FILE]
                                    [--fleet-intervals 5]

Seeds ``--jobs`` jobs into a fresh SQLite store (``seed_jobs``: one transaction, a few
seconds for 100,000), 48 hours of per-minute buckets for 4 queues and 20 fleet records,
then times ``search_jobs`` (each filter, the second page through the cursor),
``get_job``, ``read_minutes`` (3 hours of one queue, and of all) and ``daemons``: p50
and p99 in milliseconds over ``--repeat`` calls each. Then runs the daemon's fleet
reporter (``services/fleet.py``) for ``--fleet-intervals`` intervals of 0.2 s and counts
its store writes (write transactions) per interval: the target is at most 1.
Prints the figures, then a JSON summary as the last line.

``seed_jobs(store_path, n)`` is reusable (the dashboard pages' render benchmark seeds
its store with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vip_worker.store.buckets import MinuteRow
from vip_worker.store.history import entry
from vip_worker.store.ledger import new_job
from vip_worker.store.sqlite import SqliteStore
from vip_worker.store.sqlite_schema import encode, immediate, iso

STATUSES = (("completed", 70), ("failed", 10), ("queued", 10), ("processing", 5),
            ("cancelled", 5))
TYPES = ("articles", "images")
QUEUES = ("articles", "images", "articles-priority", "images-priority")
SEED_END = datetime(2026, 12, 1, tzinfo=UTC)


def seed_jobs(store_path: str | Path, n: int, *, users: int = 1000, rand_seed: int = 7,
              end: datetime = SEED_END) -> dict[str, Any]:
    """Insert ``n`` jobs (one per 10 s back from ``end``; users ``user-0..``; statuses
    mostly completed; each with a short history) into the SQLite store at
    ``store_path`` (created when missing), in one transaction. Returns what a benchmark
    needs to aim at them: ``{"jobs", "first_id", "last_id", "user_id", "since", "until"}``.
    """
    rand = random.Random(rand_seed)
    store = SqliteStore(store_path)
    weights = [w for _, w in STATUSES]
    names = [s for s, _ in STATUSES]
    rows = []
    for i in range(n):
        created = end - timedelta(seconds=10 * (n - i))
        job_id = f"{i:024x}"
        job = new_job(job_id, f"user-{rand.randrange(users)}", rand.choice(TYPES),
                      {"topic": f"topic {i}"}, created, queue="articles")
        status = rand.choices(names, weights)[0]
        if status != "queued":
            started = created + timedelta(seconds=2)
            job.update(status=status, attempts=1, startedAt=started, updatedAt=started)
            job["history"].append(entry("claimed", started, attempt=1,
                                        by="bench-host 1/poller 0"))
        if status in ("completed", "failed", "cancelled"):
            done = created + timedelta(seconds=30)
            job.update(completedAt=done, updatedAt=done, progress=100)
            job["history"].append(entry(status, done, reason="boom" if status == "failed"
                                        else None))
        rows.append((job_id, status, iso(created), encode(job)))
    conn = store._connection()
    with immediate(conn):
        conn.executemany(f'INSERT OR REPLACE INTO "{store.jobs}" (id, status, created_at, doc) '
                         "VALUES (?, ?, ?, ?)", rows)
    conn.execute("ANALYZE")
    store.close()
    return {"jobs": n, "first_id": f"{0:024x}", "last_id": f"{n - 1:024x}",
            "user_id": "user-1", "since": end - timedelta(seconds=10 * n), "until": end}


def seed_buckets(store: SqliteStore, hours: int = 48, end: datetime = SEED_END) -> int:
    """``hours`` of per-minute "queue" buckets for ``QUEUES`` (one bump per hour)."""
    rows = 0
    for hour in range(hours):
        batch = []
        for minute in range(60):
            at = end - timedelta(hours=hours - hour) + timedelta(minutes=minute)
            for queue in QUEUES:
                batch.append(MinuteRow("queue", {"queue": queue}, at,
                                       {"succeeded": 10, "failed": 1, "duration_s_sum": 30.0,
                                        "duration_n": 11}, {"visible": 150, "inflight": 8}))
        store.bump_minutes(batch)
        rows += len(batch)
    return rows


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm the page cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3)}


class CountingStore:
    """A store whose write transactions are counted (SQLite's trace callback)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.writes = 0
        store._connection().set_trace_callback(self.trace)

    def trace(self, statement: str) -> None:
        if statement.startswith("BEGIN"):
            self.writes += 1


def fleet_writes(path: str, intervals: int, interval_s: float = 0.2) -> dict[str, Any]:
    """Run the fleet reporter ``intervals`` intervals; its writes per interval."""
    from types import SimpleNamespace

    from vip_worker.services.fleet import FleetReporter

    counting = CountingStore(SqliteStore(path))
    settings = SimpleNamespace(fleet_report_interval_s=interval_s, processes=2)
    reporter = FleetReporter(settings, lambda: counting.store, tempfile.mkdtemp())

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(reporter.run())
        await asyncio.sleep(interval_s * (intervals - 0.5))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    reporter.close()
    counting.store.close()
    return {"intervals": intervals, "writes": counting.writes,
            "writes_per_interval": round(counting.writes / intervals, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_store")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--path", default="", help="store file (default: a temp dir)")
    parser.add_argument("--fleet-intervals", type=int, default=5)
    args = parser.parse_args(argv)
    path = args.path or str(Path(tempfile.mkdtemp(prefix="dash-bench-")) / "jobs.sqlite3")
    start = time.perf_counter()
    seeded = seed_jobs(path, args.jobs)
    seed_s = time.perf_counter() - start
    store = SqliteStore(path)
    bucket_rows = seed_buckets(store)
    for i in range(20):
        store.report_daemon(f"host-{i}:{100 + i}", {"hostname": f"host-{i}", "pid": 100 + i,
                                                    "pollers": 2, "inflight": [1, 2],
                                                    "state": "running", "intervalS": 10},
                            SEED_END)
    first = store.search_jobs(limit=50)
    after = (first[-1]["createdAt"], first[-1]["_id"])
    middle = seeded["since"] + (seeded["until"] - seeded["since"]) / 2
    reads = {
        "search_all": lambda: store.search_jobs(limit=50),
        "search_page2": lambda: store.search_jobs(limit=50, after=after),
        "search_user": lambda: store.search_jobs(user_id=seeded["user_id"], limit=50),
        "search_status_failed": lambda: store.search_jobs(status="failed", limit=50),
        "search_type_status": lambda: store.search_jobs(type="images", status="queued",
                                                        limit=50),
        "search_range": lambda: store.search_jobs(since=middle,
                                                  until=middle + timedelta(hours=1), limit=50),
        "search_job_id": lambda: store.search_jobs(job_id=seeded["last_id"]),
        "get_job": lambda: store.get_job(seeded["last_id"]),
        "read_minutes_3h_one_queue": lambda: store.read_minutes(
            "queue", SEED_END - timedelta(hours=3), labels={"queue": "articles"}),
        "read_minutes_3h_all": lambda: store.read_minutes("queue", SEED_END - timedelta(hours=3)),
        "daemons_20": store.daemons,
    }
    figures = {name: timed(fn, args.repeat) for name, fn in reads.items()}
    store.close()
    fleet = fleet_writes(path, args.fleet_intervals)
    print(f"seeded {args.jobs} jobs in {seed_s:.1f} s, {bucket_rows} bucket rows ({path})")
    for name, figure in figures.items():
        print(f"{name:28} p50 {figure['p50_ms']:8.3f} ms   p99 {figure['p99_ms']:8.3f} ms")
    print(f"fleet reporter: {fleet['writes']} writes in {fleet['intervals']} intervals "
          f"({fleet['writes_per_interval']} per interval; target <= 1)")
    print(json.dumps({"jobs": args.jobs, "seed_s": round(seed_s, 2), "bucket_rows": bucket_rows,
                      "reads": figures, "fleet": fleet}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
