"""The daemon's own cost per message, with no SQS endpoint: what profiling starts from.

    python -m bench.hotpath [--count N] [--log-level INFO] [--profile out.pstats]
                            [--track-jobs]

One ``Consumer`` (the poller's receive -> parse -> dispatch -> ack path, its thread
pool hops and its JSON log at the chosen level, to a file) drains ``--count`` no-op
messages from an in-memory SQS that answers at once. boto3 is left out, so the
figure is what vip-worker adds on top of the SQS calls a bare loop also makes: the
drains of ``bench.run`` measure the whole. Prints the figures, then a JSON summary
as the last line. ``--track-jobs`` provides the embedded SQLite store (in a temp state dir)
so that the job ledger claims and completes every message's job, as a daemon does by default.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from vip_worker import config, logconfig
from vip_worker.consumer import Consumer
from vip_worker.heartbeat import Heartbeat
from vip_worker.plugins.context import PollerContext
from vip_worker.plugins.registry import HandlerRegistry
from vip_worker.sqs.boto import AsyncSqs

BODY = json.dumps({"jobId": "job-{n}", "userId": "bench", "type": "noop",
                   "timestamp": "2025-01-15T10:30:00Z", "payload": {"n": 0}})


class InstantSqs:
    """Blocking SQS methods answering at once from a counter (no HTTP, no boto3)."""

    def __init__(self, count: int, latency_s: float = 0.0, prefix: str = "job") -> None:
        self.latency_s = latency_s
        self.prefix = prefix  # jobIds <prefix>-<n>: a fresh job per message in each drain
        self.sizes: dict[int, int] = {}
        self.left = count
        self.seq = 0
        self.calls: dict[str, int] = {}
        self.done = None  # (loop, event) set when every message is deleted
        self.deleted = 0
        self.count = count

    def note(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def receive(self, url, max_messages, wait_s, visibility_s):
        self.note("receive")
        if self.latency_s:
            time.sleep(self.latency_s)
        take = min(max_messages, self.left)
        self.sizes[take] = self.sizes.get(take, 0) + 1
        self.left -= take
        if take == 0:
            time.sleep(0.05)  # a long poll on an empty queue
        out = []
        for _ in range(take):
            self.seq += 1
            out.append({"MessageId": f"m-{self.seq}", "ReceiptHandle": f"r-{self.seq}",
                        "Body": BODY.replace("job-{n}", f"{self.prefix}-{self.seq}"),
                        "Attributes": {"ApproximateReceiveCount": "1"}})
        return out

    def delete_batch(self, url, entries):
        self.note("delete_batch")
        if self.latency_s:
            time.sleep(self.latency_s)
        self.deleted += len(entries)
        if self.deleted >= self.count:
            loop, event = self.done
            loop.call_soon_threadsafe(event.set)
        return []

    def change_visibility_batch(self, url, entries):
        self.note("change_visibility_batch")
        return []


async def noop(message, ctx):
    return None


async def drain(count: int, settings, latency_s: float = 0.0, prefix: str = "job",
                track_jobs: bool = False) -> dict:
    client = InstantSqs(count, latency_s, prefix)
    done = asyncio.Event()
    client.done = (asyncio.get_running_loop(), done)
    sqs = AsyncSqs(client, max_workers=len(settings.queues) + 8)
    registry = HandlerRegistry()
    registry.add("bench", "noop", noop)
    context = PollerContext(0, settings)
    if track_jobs:
        from vip_worker.store.factory import provide_store

        provide_store(context)
    consumer = Consumer(settings, registry, sqs, Heartbeat(sqs, time.monotonic),
                        context, {q.name: None for q in settings.queues})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    consumer.start()
    await done.wait()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await consumer.drain(0, wait_for_polls=False)
    consumer.close()
    sqs.close()
    context.close()
    return {"count": count, "track_jobs": consumer.ledger is not None,
            "cpu_us_per_msg": round(cpu / count * 1e6, 2),
            "msgs_per_s": round(count / wall), "calls_per_100_msgs": {
                k: round(v * 100 / count, 1) for k, v in sorted(client.calls.items())},
            "receive_sizes": dict(sorted(client.sizes.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="each SQS call sleeps this long in its thread (an endpoint's "
                             "round trip)")
    parser.add_argument("--profile", default="", help="write cProfile stats to this file")
    parser.add_argument("--track-jobs", action="store_true",
                        help="the job ledger on: an SQLite store in a temp state dir")
    args = parser.parse_args(argv)
    import uvloop

    environ = {"VIP_WORKER_QUEUE_WORK_URL": "http://127.0.0.1:1/123456789012/work",
               "VIP_WORKER_PLUGIN_DIRS": "", "VIP_WORKER_LOG_LEVEL": args.log_level}
    with tempfile.TemporaryDirectory(prefix="vip-hotpath-") as tmp:
        environ["VIP_WORKER_STATE_DIR"] = tmp
        environ["VIP_WORKER_QUEUE_WORK_TRACK_JOBS"] = "true" if args.track_jobs else "false"
        settings = config.load(environ=environ)
        log_file = str(Path(tmp) / "worker.log")
        logconfig.configure(args.log_level, log_file)
        # warm-up: imports, pools, first log lines (its own jobIds: the store keeps them)
        uvloop.run(drain(1000, settings, prefix="warm", track_jobs=args.track_jobs))
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        result = uvloop.run(drain(args.count, settings, args.latency_ms / 1000,
                                  track_jobs=args.track_jobs))
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        result["log_bytes_per_msg"] = round(os.path.getsize(log_file) / (args.count + 1000))
    result["log_level"] = args.log_level
    print(f"{result['count']} no-op messages: {result['cpu_us_per_msg']} us CPU per message "
          f"(vip-worker's own code, boto3 excluded), {result['msgs_per_s']} msgs/s, "
          f"calls per 100: {result['calls_per_100_msgs']}, "
          f"receive sizes: {result['receive_sizes']}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
