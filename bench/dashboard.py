"""Scenario: the dashboard (``vip-worker web``'s /dashboard) with many browsers and many jobs.

    python -m bench.dashboard [--quick] [--only fanout|render] [--clients N] [--jobs N]

- fanout: ``--clients`` browsers (20) each load the overview once and keep its live stream
  (/dashboard/events) open for ``--intervals`` refresh intervals. A counting proxy between
  the web and the SQS endpoint counts every GetQueueAttributes: the shared cache's target is
  at most one per queue (2 queues + their 2 DLQs) per ``dashboard_refresh_s``, however many
  browsers are open. Also counted: the updates each browser received, and the web
  process's CPU over the window.
- render: ``--jobs`` jobs (100,000) in the SQLite store (``bench.dashboard_store.seed_jobs``)
  and three hours of per-minute buckets for both queues (full charts), then sequential GETs
  of the jobs page (unfiltered, and by user and status), a job's page, and the overview:
  p50 / p99 server round trip (target: under 200 ms at p99).

The endpoint is moto's server in a process of its own, the web a ``vip-worker web`` process
(one uvicorn worker, open access on loopback), the browsers threads of this harness
(httpx). Prints the figures, then a JSON summary as the last line. Not a test: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx

from bench import endpoint as endpoints
from bench import procs, sqsutil
from bench.api import wait_healthy
from bench.latency import percentile
from bench.proxy import CountingProxy

GQA = "GetQueueAttributes"
HISTORY_MIN = 180  # the overview's default dashboard_history_h, in minutes
SIZES = {  # clients, intervals, refresh_s, jobs, requests per page
    "quick": (20, 4, 1.0, 5_000, 20),
    "full": (20, 12, 5.0, 100_000, 200),
}


def make_queues(sqs) -> dict[str, str]:
    """articles and images, each with a DLQ through its RedrivePolicy, a few messages in."""
    env = {}
    for name in ("articles", "images"):
        dlq = sqsutil.make_queue(sqs, f"{name}-dlq")
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName=f"bench-{name}-{os.getpid()}", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
        })["QueueUrl"]
        sqsutil.send_batch(sqs, url, [json.dumps({"n": n}) for n in range(5)])
        env[f"{name.upper()}_QUEUE_URL"] = url
    return env


class Browser(threading.Thread):
    """One browser: loads the overview, then reads the live stream until told to stop."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, stop
        self.updates: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=60)) as client:
                client.get("/dashboard/overview").raise_for_status()
                with client.stream("GET", "/dashboard/events") as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if line.startswith("event: update"):
                            self.updates.append(time.monotonic())
                        if self.stop.is_set():
                            return
        except httpx.HTTPError as exc:
            if not self.stop.is_set():
                self.error = repr(exc)


def fanout(url: str, proxy: CountingProxy, web_pid: int, clients: int, intervals: int,
           refresh_s: float, queue_urls: int) -> dict:
    stop = threading.Event()
    browsers = [Browser(url, stop) for _ in range(clients)]
    for browser in browsers:
        browser.start()
    # the window opens once every browser has its first update (all subscribed)
    procs.wait_until(lambda: all(b.updates or b.error for b in browsers), 60,
                     "every browser's first live update")
    cpu0, t0 = procs.cpu_s(web_pid) or 0.0, time.monotonic()
    time.sleep(intervals * refresh_s)  # the measured window (a benchmark, not a test)
    t1 = time.monotonic()
    cpu = (procs.cpu_s(web_pid) or 0.0) - cpu0
    stop.set()
    calls = proxy.count(GQA, t0, t1)
    window_intervals = (t1 - t0) / refresh_s
    received = [sum(1 for at in b.updates if t0 <= at < t1) for b in browsers]
    for browser in browsers:
        browser.join(timeout=2 * refresh_s + 5)
    return {"clients": clients, "refresh_s": refresh_s, "window_s": round(t1 - t0, 2),
            "queue_urls": queue_urls, "gqa_calls": calls,
            "gqa_per_queue_per_interval": round(calls / queue_urls / window_intervals, 3),
            "updates_per_client_min": min(received), "updates_per_client_max": max(received),
            "fanout_web_cpu_ms_per_interval": round(cpu * 1000 / window_intervals, 1),
            "client_errors": [b.error for b in browsers if b.error]}


def timed(client: httpx.Client, path: str, count: int, params=None) -> list[float]:
    out = []
    for n in range(count):
        started = time.perf_counter()
        response = client.get(path(n) if callable(path) else path, params=params)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {response.url}: {response.status_code} {response.text[:300]}")
    return out


def render(url: str, job_ids: list[str], users: list[str], count: int) -> dict:
    figures = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        # the first overview makes the web's SQS client and asks SQS: reported on its own
        figures["overview_first_ms"] = round(timed(client, "/dashboard/overview", 1)[0], 1)
        timed(client, "/dashboard/jobs", 3)  # warm: templates compiled, connections open
        pages = {
            "jobs_page": timed(client, "/dashboard/jobs", count),
            "jobs_filtered": timed(client, "/dashboard/jobs", count,
                                   {"user_id": random.choice(users), "status": "completed"}),
            "job_page": timed(client, lambda n: f"/dashboard/jobs/{job_ids[n % len(job_ids)]}",
                              count),
            "overview": timed(client, "/dashboard/overview", count),
        }
    for name, values in pages.items():
        figures[f"{name}_p50_ms"] = round(percentile(values, 50), 1)
        figures[f"{name}_p99_ms"] = round(percentile(values, 99), 1)
    return figures


def history_rows(now: datetime, minutes: int) -> list:
    """``minutes`` of "queue" buckets for both queues, as the daemons write them: the
    overview's charts then draw full lines (its render time includes them)."""
    from vip_worker.store.buckets import MinuteRow

    top = now.replace(second=0, microsecond=0)
    rand = random.Random(3)
    return [MinuteRow("queue", {"queue": name}, top - timedelta(minutes=m),
                      {"succeeded": rand.randrange(5, 15), "failed": rand.randrange(0, 2),
                       "duration_s_sum": rand.uniform(300, 600), "duration_n": 10},
                      {"visible": rand.randrange(0, 150), "inflight": rand.randrange(0, 10)})
            for name in ("articles", "images") for m in range(minutes)]


def seed(store_path: str, jobs: int) -> tuple[list[str], list[str], float]:
    """``jobs`` jobs in the SQLite store; (job ids to open, users to search for, seconds)."""
    from bench.dashboard_store import seed_jobs
    from vip_worker.store.sqlite import SqliteStore

    started = time.perf_counter()
    seeded = seed_jobs(store_path, jobs)
    took = time.perf_counter() - started
    store = SqliteStore(store_path)
    try:  # the newest page's jobs, and the oldest job (the far end of the index)
        sample = store.search_jobs(limit=100)
        store.bump_minutes(history_rows(datetime.now(UTC), HISTORY_MIN))
    finally:
        store.close()
    job_ids = [str(j["_id"]) for j in sample] + [seeded["first_id"], seeded["last_id"]]
    users = sorted({seeded["user_id"], *(str(j["userId"]) for j in sample if j.get("userId"))})
    return job_ids, users, took


def run(work: str, size: str, only: str | None, clients: int | None, jobs: int | None) -> dict:
    n_clients, intervals, refresh_s, n_jobs, requests = SIZES[size]
    n_clients, n_jobs = clients or n_clients, jobs or n_jobs
    ep = endpoints.start("moto", work)
    proxy = CountingProxy(ep.url).start()
    result: dict = {"scenario": "dashboard", "size": size, "endpoint": "moto"}
    web = None
    try:
        sqs = sqsutil.client(ep.url)
        queues = make_queues(sqs)
        state = os.path.join(work, "state")
        os.makedirs(state, exist_ok=True)
        store_path = os.path.join(state, "jobs.sqlite3")
        job_ids, users = [], []
        if only in (None, "render"):
            job_ids, users, took = seed(store_path, n_jobs)
            result.update(jobs=n_jobs, seed_s=round(took, 1))
        port = endpoints.free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**endpoints.base_env(), **queues, "AWS_ENDPOINT_URL_SQS": proxy.url,
               "VIP_WORKER_STATE_DIR": state, "VIP_WORKER_SQLITE_PATH": store_path,
               "VIP_WORKER_DASHBOARD_REFRESH_S": str(refresh_s)}
        web = procs.start_group([sys.executable, "-m", "vip_worker", "web", "--port",
                                 str(port)], os.path.join(work, "web.log"), env=env, cwd=work)
        wait_healthy(url)
        if only in (None, "render"):
            result.update(render(url, job_ids, users, requests))
        if only in (None, "fanout"):
            result.update(fanout(url, proxy, web.pid, n_clients, intervals, refresh_s,
                                 queue_urls=4))
    finally:
        if web is not None:
            procs.stop_group(web)
        proxy.stop()
        ep.stop()
    return result


def report(result: dict) -> None:
    if "gqa_calls" in result:
        print(f"{result['clients']} browsers for {result['window_s']} s "
              f"(refresh {result['refresh_s']:g} s): {result['gqa_calls']} GetQueueAttributes "
              f"for {result['queue_urls']} queues = {result['gqa_per_queue_per_interval']} per "
              f"queue per interval (target <= 1); updates per browser "
              f"{result['updates_per_client_min']}-{result['updates_per_client_max']}; web "
              f"{result['fanout_web_cpu_ms_per_interval']} ms CPU per interval")
    if "overview_first_ms" in result:
        print(f"first overview (SQS client made, SQS asked): {result['overview_first_ms']} ms")
    for page in ("jobs_page", "jobs_filtered", "job_page", "overview"):
        if f"{page}_p99_ms" in result:
            print(f"{page:<14} with {result['jobs']:,} jobs: p50 {result[f'{page}_p50_ms']} ms, "
                  f"p99 {result[f'{page}_p99_ms']} ms (target p99 < 200 ms)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 s refresh, 4 intervals, 5,000 jobs (under a minute)")
    parser.add_argument("--only", choices=("fanout", "render"))
    parser.add_argument("--clients", type=int, help="browsers (default 20)")
    parser.add_argument("--jobs", type=int, help="jobs in the store (default 100,000)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-dashboard-")
    try:
        result = run(work, "quick" if args.quick else "full", args.only, args.clients,
                     args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
