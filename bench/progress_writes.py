"""Progress writes of N held jobs: N ``progress`` calls against one ``progress_many``.

    .venv/bin/python -m bench.progress_writes [--jobs 100] [--rounds 50]

The SQLite store on a file in a temporary directory (WAL, as the daemon runs it); each
round moves every job's progress once. Prints wall and CPU milliseconds per round for
both, then a JSON summary as its last line (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime

from vip_worker.store.sqlite import SqliteStore


def measure(fn, rounds: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for r in range(rounds):
        fn(r)
    return {"wall_ms": round((time.perf_counter() - wall) / rounds * 1000, 2),
            "cpu_ms": round((time.process_time() - cpu) / rounds * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    n = args.jobs
    with tempfile.TemporaryDirectory() as work:
        store = SqliteStore(f"{work}/jobs.sqlite3")
        now = datetime.now(UTC)
        for i in range(n):
            store.create_job(f"j{i}", "u", "articles", {}, now)
            store.claim(f"j{i}", user_id="u", type="articles", params={}, message_id=f"m{i}",
                        lease_s=3600, now=now, delivery=f"d{i}")

        def one_by_one(r: int) -> None:
            for i in range(n):
                store.progress(f"j{i}", 10 + r % 60, "Writing...", datetime.now(UTC),
                               delivery=f"d{i}")

        def batched(r: int) -> None:
            store.progress_many([(f"j{i}", f"d{i}", 10 + r % 60, "Writing...", False)
                                 for i in range(n)], datetime.now(UTC))

        summary = {"jobs": n, "rounds": args.rounds,
                   "progress_each": measure(one_by_one, args.rounds),
                   "progress_many": measure(batched, args.rounds)}
        store.close()
    for name in ("progress_each", "progress_many"):
        print(f"{name:14} {n} jobs: {summary[name]['wall_ms']} ms wall, "
              f"{summary[name]['cpu_ms']} ms CPU per round")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
