"""The dashboard's jobs pages rendered on a big embedded store, through real HTTP.

    python -m bench.dashboard_pages [--jobs 100000] [--repeat 50]

Seeds ``--jobs`` jobs (the store's own ``create_job``; 500 users, two types, one second
apart; every 10th failed) into a fresh SQLite store, serves ``vip-worker web`` on 127.0.0.1
in a thread (open access: no key), then times GET of the jobs page (newest, one user's, a
status, the second page through the cursor) and of one job's page: p50 and p99 in
milliseconds over ``--repeat`` requests each, seen by an HTTP client on the same machine.
Prints the figures, then a JSON summary as the last line. Target (issue 16): under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def seed(store, jobs: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(jobs):
        job_id = f"{n:024x}"
        at = start + timedelta(seconds=n)
        store.create_job(job_id, f"user-{n % 500}", "images" if n % 4 == 0 else "articles",
                         {"topic": f"topic {n}", "wordCount": 800}, at)
        if n % 10 == 0:
            store.fail(job_id, "GenerationError: bench", at)


def timed(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 1),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    from vip_worker import config
    from vip_worker.pipeline.producer import Producer
    from vip_worker.web.app import create_app
    from vip_worker.web.server import bind, make_server, url_of

    state = tempfile.mkdtemp(prefix="bench-dashboard-")
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": state}, require_queues=False)
    producer = Producer(settings)
    began = time.perf_counter()
    seed(producer.store, args.jobs)
    print(f"seeded {args.jobs} jobs in {time.perf_counter() - began:.1f} s")
    sock = bind("127.0.0.1", 0)
    server = make_server(settings, create_app(settings, producer), sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    figures = {}
    try:
        with httpx.Client(base_url=url_of(sock), timeout=30) as client:
            first = client.get("/dashboard/jobs", params={"status": "failed"}).text
            cursor = re.search(r'class="next" href="[^"]*cursor=([^"&]+)', first).group(1)
            pages = {
                "jobs newest": "/dashboard/jobs",
                "jobs of a user": "/dashboard/jobs?user_id=user-7",
                "jobs failed": "/dashboard/jobs?status=failed",
                "jobs failed, page 2": f"/dashboard/jobs?status=failed&cursor={cursor}",
                "jobs in an hour": "/dashboard/jobs?since=2026-01-01T10:00&until=2026-01-01T11:00",
                "a job": f"/dashboard/jobs/{args.jobs // 2:024x}",
            }
            for name, path in pages.items():
                client.get(path)  # warm
                figures[name] = timed(client, path, args.repeat)
                print(f"{name:<26} p50 {figures[name]['p50_ms']:>6} ms   "
                      f"p99 {figures[name]['p99_ms']:>6} ms")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
    print(json.dumps({"jobs": args.jobs, "repeat": args.repeat, "pages": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
