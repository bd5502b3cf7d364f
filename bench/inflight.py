"""Scenarios 4 and 5: many long I/O-bound jobs held by one daemon; heartbeat cost, RSS, CPU.

One daemon, one poller, ``concurrency = jobs``, the queue's ``visibility_timeout_s`` set
small (10 s) so that several heartbeat intervals pass in the window: each held message is
extended when half of its timeout is left. The jobs sleep far longer than the window:
``async_sleep`` awaits ``asyncio.sleep`` on the loop; ``sleep`` is a plain ``def`` that
``time.sleep``-s in the handler thread pool (one thread per job).

Heartbeat calls are the log's ``heartbeat.extended`` lines (INFO, one per
ChangeMessageVisibilityBatch call, with the entry count). ``calls_per_10_inflight`` is
calls x 10 / entries extended: 1.0 when every call carries 10 messages, 10.0 for one call
per message.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import procs, sqsutil
from bench.daemonproc import BenchDaemon

VISIBILITY_S = 10


def in_flight(daemon: BenchDaemon) -> int:
    return sum(p.get("in_flight", 0) for p in daemon.status().get("pollers", []))


def run(endpoint, sqs, workdir: Path, message_type: str, jobs: int, window_s: float,
        visibility_s: int = VISIBILITY_S) -> dict:
    url = sqsutil.make_queue(sqs, f"held-{message_type.replace('_', '-')}")
    daemon = BenchDaemon(workdir, endpoint.url, {"work": url},
                         queue_settings={"visibility_timeout_s": visibility_s},
                         processes=1, concurrency=jobs, grace_period_s=0)
    daemon.keep = {"heartbeat.extended"}
    try:
        daemon.wait_ready(1)
        rss_idle = daemon.rss_mb()
        seconds = window_s + 120
        started = time.monotonic()
        sqsutil.fill(sqs, url, [sqsutil.envelope(message_type, f"held-{n}", {"seconds": seconds})
                                for n in range(jobs)])
        procs.wait_until(lambda: in_flight(daemon) >= jobs, 120 + jobs / 10,
                         f"{jobs} jobs in flight", every_s=0.2)
        held_after_s = time.monotonic() - started
        time.sleep(visibility_s * 0.75)  # every message has had its first extension
        daemon.pump()
        first = len(daemon.records)
        cpu = procs.TreeCpu(daemon.pid)
        cpu0 = cpu.sample()
        calls0 = endpoint.calls()
        t0 = time.monotonic()
        rss_max = 0.0
        while time.monotonic() - t0 < window_s:
            time.sleep(1.0)
            cpu.sample()
            rss_max = max(rss_max, daemon.rss_mb())
        elapsed = time.monotonic() - t0
        cpu1 = cpu.sample()
        daemon.pump()
        calls1 = endpoint.calls()
        lines = daemon.records[first:]
        calls = len(lines)
        entries = sum(r.get("count", 0) + r.get("failed", 0) for r in lines)
        per_process = {pid: round(procs.rss_kb(pid) / 1024, 1) for pid in procs.tree(daemon.pid)}
        result = {
            "type": message_type, "jobs": jobs, "in_flight": in_flight(daemon),
            "held_after_s": round(held_after_s, 1), "window_s": round(elapsed, 1),
            "visibility_timeout_s": visibility_s,
            "rss_mb": round(daemon.rss_mb(), 1), "rss_max_mb": round(rss_max, 1),
            "rss_idle_mb": round(rss_idle, 1), "rss_per_process_mb": per_process,
            "threads": daemon.threads(),
            "cpu_pct": round((cpu1 - cpu0) / elapsed * 100, 2),
            "heartbeat_calls": calls, "heartbeat_entries": entries,
            "heartbeat_calls_per_min": round(calls / elapsed * 60, 1),
            "one_call_per_message_per_min": round(entries / elapsed * 60, 1),
            "calls_per_10_inflight": round(calls * 10 / entries, 3) if entries else None,
            "failed_entries": sum(r.get("failed", 0) for r in lines),
            "settings": f"processes=1, concurrency={jobs}, visibility_timeout_s={visibility_s}, "
                        f"grace_period_s=0, {message_type} handler",
        }
        if calls1 is not None:
            result["endpoint_change_visibility_batch_calls"] = (
                calls1.get("ChangeMessageVisibilityBatch", 0)
                - calls0.get("ChangeMessageVisibilityBatch", 0))
        return result
    finally:
        daemon.stop()
        sqsutil.delete_queue(sqs, url)
