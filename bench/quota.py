"""The quota governor's costs: ``python -m bench.quota [--quick]`` (JSON summary last).

1. Cost per acquire: store round trips (counted on a wrapper of the store: each
   ``ctx.quota`` acquire is one ``acquire_permit`` call) and CPU microseconds per acquire
   (``time.process_time`` around the call; the report after the call measured apart), on
   the SQLite file store and on mongomock (an in-memory stand-in: its figure is the cost
   of evaluating the pipeline in Python, not a server's). The window is kept full: the
   virtual clock advances 60/rpm s per call, so ~rpm calls are in the record (rpm 600,
   and rpm 60 on SQLite).
2. The limit's accuracy across a fleet: ``--procs`` processes share one SQLite file and
   ask for permits as fast as they can for ``--seconds`` (a short version of the e2e
   test's 60 s: every grant falls in one window), limit ``rpm``: the granted calls are the
   worst 60 s window.
3. SQS calls per deferral: one consumer (tests/fakes.py's FakeSqs, which counts calls)
   runs a message whose handler defers ``--deferrals`` times, with ``maxReceiveCount`` 5
   (so the re-send before the redrive is exercised); SQS and store calls per deferral.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Counting:
    """Counts the calls made to a store's methods."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, {}

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call


def acquire_cost(store, n: int, rpm: int = 600) -> dict:
    from vip_worker.pipeline.quota import Governor
    from vip_worker.store.quota import QuotaLimits

    counted = Counting(store)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    gov = Governor(lambda: counted, {"generation": QuotaLimits(rpm=rpm, concurrency=8,
                                                               tpm=10**9)},
                   clock=lambda: now[0])
    acquire_cpu = report_cpu = 0.0
    step = timedelta(seconds=60 / rpm * 1.01)
    for n_call in range(n):
        now[0] += step
        start = time.process_time()
        permit = gov.permit(tokens=1000, user=f"u{n_call % 5}")
        middle = time.process_time()
        permit.__exit__(None, None, None)
        report_cpu += time.process_time() - middle
        acquire_cpu += middle - start
    return {"acquires": n, "round_trips_per_acquire": counted.calls["acquire_permit"] / n,
            "acquire_cpu_us": round(acquire_cpu / n * 1e6, 1),
            "report_cpu_us": round(report_cpu / n * 1e6, 1),
            "calls_in_window": len(counted.store.quota_record("generation")["log"])}


def ask(path: str, seconds: float, rpm: int, results) -> None:
    from vip_worker.store.quota import QuotaLimits
    from vip_worker.store.sqlite import SqliteStore

    store, limits = SqliteStore(path), QuotaLimits(rpm=rpm)
    deadline, granted, asks = time.monotonic() + seconds, [], 0
    while time.monotonic() < deadline:
        asks += 1
        grant = store.acquire_permit("generation", uuid.uuid4().hex, datetime.now(UTC),
                                     limits=limits)
        if grant.ok:
            granted.append(time.time())
    store.close()
    results.put((asks, granted))


def fleet_accuracy(procs: int, seconds: float, rpm: int) -> dict:
    from vip_worker.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory(prefix="bench-quota-") as tmp:
        path = os.path.join(tmp, "jobs.sqlite3")
        SqliteStore(path).close()
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        workers = [ctx.Process(target=ask, args=(path, seconds, rpm, results))
                   for _ in range(procs)]
        for worker in workers:
            worker.start()
        try:
            answers = [results.get(timeout=seconds + 60) for _ in workers]
        finally:
            for worker in workers:
                worker.join(timeout=10)
                if worker.is_alive():
                    worker.kill()
    times = sorted(t for _, granted in answers for t in granted)
    worst, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 60:
            first += 1
        worst = max(worst, last - first + 1)
    asks = sum(a for a, _ in answers)
    return {"processes": procs, "seconds": seconds, "limit_rpm": rpm,
            "worst_60s_window": worst, "asks": asks,
            "asks_per_s": round(asks / seconds, 1)}


def deferral_calls(deferrals: int, max_receives: int = 5) -> dict:
    sys.path.insert(0, ROOT)
    from tests.fakes import ConsumerHarness, wait_until
    from tests.support.jobstore import RecordingStore
    from tests.support.sqs import envelope
    from vip_worker.errors import Deferred
    from vip_worker.testing import MemoryStore

    runs = []

    def handler(message, ctx):
        runs.append(1)
        if len(runs) <= deferrals:
            raise Deferred("quota:generation:rpm", 0)

    store = RecordingStore(MemoryStore())
    h = ConsumerHarness({"articles": handler}, store=store)
    h.max_receives = {"work": max_receives}
    h.send(envelope(job_id="a" * 24))
    job_done = lambda: (store.get_job("a" * 24) or {}).get("status") == "completed"  # noqa: E731

    async def scenario(consumer):
        await wait_until(lambda: job_done() and h.idle(), what="the deferrals", timeout_s=60)
        return consumer

    logging.getLogger("vip_worker").setLevel(logging.ERROR)  # message.resent lines
    consumer = h.run(scenario, timeout_s=120)
    calls = [name for name, _ in h.fake.calls]
    receives = sum(1 for name in calls if name == "receive")
    sqs_calls = len(calls)
    # Not the deferrals': the harness's own first send, the last (successful) run's
    # receive and delete.
    per_deferral = (sqs_calls - 3) / deferrals
    by_kind: dict[str, int] = {}
    for name in calls:
        by_kind[name] = by_kind.get(name, 0) + 1
    store_calls = len([c for c in store.calls if c in ("claim", "release")])
    return {"deferrals": consumer.stats["deferred"], "max_receive_count": max_receives,
            "sqs_calls_per_deferral": round(per_deferral, 2),
            "sqs_calls": by_kind, "receives": receives,
            "resent": consumer.resender.resent,
            "store_calls_per_deferral": round((store_calls - 1) / deferrals, 2),
            "attempts_after": store.get_job("a" * 24)["attempts"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quota")
    parser.add_argument("--quick", action="store_true", help="small counts, 3 s fleet run")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rpm", type=int, default=100)
    args = parser.parse_args(argv)
    n = 300 if args.quick else 3000
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    from vip_worker.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory(prefix="bench-quota-") as tmp:
        sqlite = SqliteStore(os.path.join(tmp, "jobs.sqlite3"))
        cost_sqlite = acquire_cost(sqlite, n)
        sqlite.close()
        sqlite = SqliteStore(os.path.join(tmp, "jobs60.sqlite3"))
        cost_sqlite_60 = acquire_cost(sqlite, n, rpm=60)
        sqlite.close()
    print("acquire cost, sqlite file, rpm 600:", json.dumps(cost_sqlite), flush=True)
    print("acquire cost, sqlite file, rpm 60:", json.dumps(cost_sqlite_60), flush=True)
    import mongomock

    from vip_worker.store.mongo import MongoStore

    client = mongomock.MongoClient(tz_aware=True)
    cost_mongomock = acquire_cost(MongoStore(database="bench", client=client), n // 3)
    print("acquire cost, mongomock:", json.dumps(cost_mongomock), flush=True)
    accuracy = fleet_accuracy(args.procs, seconds, args.rpm)
    print("fleet accuracy:", json.dumps(accuracy), flush=True)
    deferral = deferral_calls(20 if args.quick else 60)
    print("deferral:", json.dumps(deferral), flush=True)
    summary = {
        "acquire_round_trips": cost_sqlite["round_trips_per_acquire"],
        "acquire_cpu_us_sqlite": cost_sqlite["acquire_cpu_us"],
        "acquire_cpu_us_sqlite_rpm60": cost_sqlite_60["acquire_cpu_us"],
        "report_cpu_us_sqlite": cost_sqlite["report_cpu_us"],
        "acquire_cpu_us_mongomock": cost_mongomock["acquire_cpu_us"],
        "limit_rpm": accuracy["limit_rpm"], "worst_60s_window": accuracy["worst_60s_window"],
        "fleet_asks_per_s": accuracy["asks_per_s"],
        "sqs_calls_per_deferral": deferral["sqs_calls_per_deferral"],
        "store_calls_per_deferral": deferral["store_calls_per_deferral"],
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
