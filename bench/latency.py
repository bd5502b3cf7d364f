"""Scenario 3: pickup latency on an idle daemon, from SendMessage returning to the handler.

The daemon runs with its defaults (2 pollers, concurrency 10, 20 s long polls) on one
queue. Messages are sent one at a time, ``interval_s`` apart (with jitter), by the
harness; after each ``send_message`` returns the harness notes ``time.time()``. The
``stamp`` handler appends ``time.time()`` at its first line to a file (no log line
involved, so the log level plays no part). Latency = stamp - send return, same clock.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from bench import procs, sqsutil
from bench.daemonproc import BenchDaemon


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run(endpoint, sqs, workdir: Path, count: int, interval_s: float) -> dict:
    url = sqsutil.make_queue(sqs, "pickup")
    stamps = workdir / "stamps.txt"
    workdir.mkdir(parents=True, exist_ok=True)
    stamps.touch()
    daemon = BenchDaemon(workdir, endpoint.url, {"work": url}, stamp_file=str(stamps))
    sent: dict[str, float] = {}
    try:
        daemon.wait_ready(2)
        time.sleep(0.5)  # both pollers' long polls parked
        rng = random.Random(7)
        for n in range(count):
            job = f"pickup-{n}"
            sqs.send_message(QueueUrl=url, MessageBody=sqsutil.envelope("stamp", job))
            sent[job] = time.time()
            time.sleep(interval_s * (0.5 + rng.random()))

        def all_stamped():
            return len(stamps.read_text().splitlines()) >= count

        procs.wait_until(all_stamped, 30, f"{count} stamps")
    finally:
        daemon.stop()
        sqsutil.delete_queue(sqs, url)
    started: dict[str, float] = {}
    for line in stamps.read_text().splitlines():
        job, at = line.split()
        started.setdefault(job, float(at))
    latencies = [(started[job] - at) * 1000 for job, at in sent.items() if job in started]
    return {
        "count": len(latencies), "interval_s": interval_s,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "min_ms": round(min(latencies), 2), "max_ms": round(max(latencies), 2),
        "settings": "defaults: processes=2, concurrency=10, wait_time_s=20, one queue",
    }
