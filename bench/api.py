"""Scenario: the job API (``vip-worker web``) on SQLite, the SQS endpoint in its own process.

    python -m bench.api [--quick] [--endpoint moto|localstack] [--get-rate N] [--post-rate N]
                        [--client auto|wrk|python] [--connections N] [--pin] [--threads N]

- GET a job at a fixed rate (500/s by default): p50 / p99.
- POST /api/content/generate at a fixed rate (20/s by default): p50 / p99, each one a store
  insert plus a SendMessage to the endpoint.

The load generator (``--client``): ``wrk`` (the default when it is on PATH) with
bench/wrk_fixed_rate.lua, which paces wrk's connections to the rate; a C client that costs
the shared machine little, so the figure is the server's. wrk times each request from when
it is written; a request whose slot passed while every connection was busy is counted in
``*_late_n`` / ``*_late_max_ms`` (0 means the run was an open loop). ``python``: httpx,
one connection per thread, open loop (latency counts from each scheduled time), but the
harness then takes 0.3-0.5 of a core at 500/s. ``--pin`` puts the web on CPU 0 and wrk on
CPU 1 (``taskset``).
- SSE freshness: the harness writes a progress step into the store and times its arrival on
  the job's event stream (the server polls the store every ``web_events_poll_s``, 0.5 s).

The web runs as ``vip-worker web`` in a process of its own (one uvicorn worker), the client
here with one connection per thread. The CPU of the web process and of the harness is
measured per phase (``*_web_cpu_ms_per_req``, ``*_web_busy``: the web's CPU seconds per wall
second, 1.0 = one core; ``*_client_busy`` the same for the harness), to tell which side bounds
a rate on a small machine. Prints the figures, then a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx

from bench import endpoint as endpoints
from bench import procs, sqsutil
from bench.latency import percentile

ARTICLE = {"mode": "topic", "topic": "Fantasy Football Strategies", "wordCount": 1500,
           "tone": "Professional", "seoOptimization": True, "includeImages": False}


def fixed_rate(call, rate_per_s: float, count: int, threads: int = 8) -> list[float]:
    """Latencies (ms) of ``count`` calls started every 1/rate s, from their scheduled time."""
    start = time.perf_counter() + 0.2
    local = threading.local()

    def one(n: int) -> float:
        due = start + n / rate_per_s
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        call(local.client)
        return (time.perf_counter() - due) * 1000

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_fixed_rate.lua")


def wrk_rate(url: str, rate_per_s: float, count: int, headers: dict, connections: int,
             body_file: str | None = None, cpu: int | None = None) -> dict:
    """``count`` requests at ``rate_per_s`` by wrk (GET, or POST of ``body_file``), on CPU
    ``cpu`` when given: wrk's figures (bench/wrk_fixed_rate.lua's JSON line)."""
    duration_s = max(1, round(count / rate_per_s))
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s",
            "-s", WRK_SCRIPT]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args += [url, "--", str(rate_per_s), "1"]
    if body_file:
        args += ["POST", body_file]
    if cpu is not None:
        args = ["taskset", "-c", str(cpu), *args]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=duration_s + 60)
    finally:
        if proc.poll() is None:
            procs.stop_group(proc)
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("WRK_JSON "):
            figures = json.loads(line[len("WRK_JSON "):])
            break
    else:
        raise RuntimeError(f"wrk gave no figures (exit {proc.returncode}): "
                           f"{(stdout + stderr).decode(errors='replace')[-2000:]}")
    errors = sum(v for k, v in figures.items() if k.startswith("errors_"))
    if errors:
        raise RuntimeError(f"wrk: {errors} failed requests: {figures}")
    return figures


def sse_freshness(url: str, headers: dict, store, job_id: str, steps: int) -> list[float]:
    """ms from a progress write in the store to its event on the stream."""
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with httpx.Client(timeout=60) as client, client.stream(
                "GET", f"{url}/api/content/jobs/{job_id}/events", headers=headers) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrived.setdefault(json.loads(line[6:])["progress"], time.perf_counter())
                    ready.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    now = datetime.now(UTC)
    store.claim(job_id, user_id="bench", type="articles", params=ARTICLE, message_id="m",
                lease_s=600, now=now)
    delays = []
    rng = random.Random(7)
    for step in range(1, steps + 1):
        written = time.perf_counter()
        store.progress(job_id, step, f"step {step}", datetime.now(UTC))
        deadline = written + 5
        while step not in arrived and time.perf_counter() < deadline:
            time.sleep(0.002)
        if step in arrived:
            delays.append((arrived[step] - written) * 1000)
        # The last event came right after a poll: a fixed pause would land every write at
        # the same phase of the next one. A random phase measures the average freshness.
        time.sleep(rng.uniform(0.0, 0.6))
    store.save_result(job_id, "generated_content", {"title": "t"}, datetime.now(UTC))
    listener.join(10)
    return delays


def summary(name: str, values: list[float]) -> dict:
    return {f"{name}_p50_ms": round(percentile(values, 50), 2),
            f"{name}_p99_ms": round(percentile(values, 99), 2), f"{name}_n": len(values)}


SIZES = {"smoke": (50, 20, 3), "quick": (300, 100, 10), "full": (3000, 600, 40)}
GET_RATE, POST_RATE, THREADS, CONNECTIONS = 500.0, 20.0, 8, 64


def wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{url}/api/health", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def phase(name: str, web_pid: int, fn) -> tuple[list[float], dict]:
    """Run ``fn()`` (a ``fixed_rate``), measuring the web's and the harness's CPU over it."""
    web0, mine0, t0 = procs.cpu_s(web_pid) or 0.0, time.process_time(), time.perf_counter()
    values = fn()
    wall = time.perf_counter() - t0
    web = (procs.cpu_s(web_pid) or 0.0) - web0
    mine = time.process_time() - mine0
    return values, {f"{name}_web_cpu_ms_per_req": round(web / len(values) * 1000, 3),
                    f"{name}_web_busy": round(web / wall, 2),
                    f"{name}_client_busy": round(mine / wall, 2),
                    f"{name}_achieved_per_s": round(len(values) / wall, 1)}


def wrk_phase(name: str, web_pid: int, url: str, rate: float, count: int, headers: dict,
              connections: int, body_file: str | None, pin: bool) -> dict:
    """``phase`` for wrk: its latency figures and the web's and wrk's CPU over the run."""
    web0, kids0, t0 = (procs.cpu_s(web_pid) or 0.0, children_cpu_s(), time.perf_counter())
    wait0 = runq_wait_s(web_pid)
    figures = wrk_rate(url, rate, count, headers, connections, body_file,
                       cpu=1 if pin else None)
    wall = time.perf_counter() - t0
    waited = runq_wait_s(web_pid) - wait0
    web = (procs.cpu_s(web_pid) or 0.0) - web0
    client = children_cpu_s() - kids0
    n = figures["requests"]
    return {f"{name}_p50_ms": round(figures["p50_ms"], 2),
            f"{name}_p99_ms": round(figures["p99_ms"], 2),
            f"{name}_p999_ms": round(figures["p999_ms"], 2),
            f"{name}_max_ms": round(figures["max_ms"], 2), f"{name}_n": n,
            f"{name}_late_n": figures["late_n"], f"{name}_late_max_ms": figures["late_max_ms"],
            f"{name}_web_runq_wait_ms": round(waited * 1000, 1),
            f"{name}_web_cpu_ms_per_req": round(web / max(n, 1) * 1000, 3),
            f"{name}_web_busy": round(web / wall, 2),
            f"{name}_client_busy": round(client / wall, 2),
            f"{name}_achieved_per_s": round(n / figures["duration_s"], 1)}


def runq_wait_s(pid: int) -> float:
    """Seconds the process's main thread (the web's event loop) has waited for a CPU while
    runnable (/proc/<pid>/schedstat, field 2): how much the machine's other work held it."""
    try:
        with open(f"/proc/{pid}/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (wrk, once it has exited)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pick_client(client: str) -> str:
    if client == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("bench.api: --client wrk, but wrk is not on PATH (apt-get install wrk)")
    return client


def run(ep, workdir: str, size: str = "full", get_rate: float = GET_RATE,
        post_rate: float = POST_RATE, threads: int = THREADS, client: str = "auto",
        connections: int = CONNECTIONS, pin: bool = False) -> dict:
    """The scenario against the running endpoint ``ep`` (bench.endpoint); the figures."""
    client = pick_client(client)
    pin = pin and client == "wrk" and (os.cpu_count() or 1) >= 2 and bool(
        shutil.which("taskset"))
    gets, posts, steps = SIZES[size]
    os.makedirs(workdir, exist_ok=True)
    queue = sqsutil.make_queue(sqsutil.client(ep.url), "api")
    env = {**endpoints.base_env(), "AWS_ENDPOINT_URL_SQS": ep.url,
           "VIP_WORKER_STATE_DIR": os.path.join(workdir, "state"),
           "ARTICLES_QUEUE_URL": queue, "VIP_WORKER_WEB_RATE_PER_MINUTE": "100000",
           "VIP_WORKER_WEB_RATE_BURST": "100000"}
    port = endpoints.free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "vip_worker", "web", "--port", str(port)]
    if pin:
        command = ["taskset", "-c", "0", *command]
    web = procs.start_group(command, os.path.join(workdir, "web.log"), env=env, cwd=workdir)
    headers = {"X-User-Id": "bench"}  # open access: loopback, no key
    try:
        wait_healthy(url)
        job_id = httpx.post(f"{url}/api/content/generate", json=ARTICLE, headers=headers,
                            timeout=30).json()["jobId"]
        # gets / posts scale with the rate: each phase lasts as long as at the old rates.
        gets = max(gets, int(gets * get_rate / 100))
        posts = max(posts, int(posts * post_rate / 20))
        if client == "wrk":
            body_file = os.path.join(workdir, "article.json")
            with open(body_file, "w", encoding="utf-8") as handle:
                json.dump(ARTICLE, handle)
            get_figures = wrk_phase("get", web.pid, f"{url}/api/content/jobs/{job_id}",
                                    get_rate, gets, headers, connections, None, pin)
            post_figures = wrk_phase("post", web.pid, f"{url}/api/content/generate",
                                     post_rate, posts, headers, min(connections, 16),
                                     body_file, pin)
        else:
            get_ms, get_cpu = phase("get", web.pid, lambda: fixed_rate(
                lambda c: c.get(f"{url}/api/content/jobs/{job_id}",
                                headers=headers).raise_for_status(), get_rate, gets, threads))
            post_ms, post_cpu = phase("post", web.pid, lambda: fixed_rate(
                lambda c: c.post(f"{url}/api/content/generate", json=ARTICLE,
                                 headers=headers).raise_for_status(), post_rate, posts,
                threads))
            get_figures = {**summary("get", get_ms), **get_cpu}
            post_figures = {**summary("post", post_ms), **post_cpu}
        from vip_worker.store.sqlite import SqliteStore

        store = SqliteStore(os.path.join(workdir, "state", "jobs.sqlite3"))
        try:
            sse_job = httpx.post(f"{url}/api/content/generate", json=ARTICLE, headers=headers,
                                 timeout=30).json()["jobId"]
            fresh_ms = sse_freshness(url, headers, store, sse_job, steps)
        finally:
            store.close()
        return {"scenario": "api", "endpoint": ep.kind, "get_rate_per_s": get_rate,
                "post_rate_per_s": post_rate, "client": client, "pinned": pin,
                "client_threads": threads if client == "python" else None,
                "client_connections": connections if client == "wrk" else None,
                **get_figures, **post_figures,
                **summary("sse_fresh", fresh_ms),
                "web_cpu_s": round(procs.cpu_s(web.pid) or 0.0, 2)}
    finally:
        procs.stop_group(web)


def report(result: dict) -> None:
    client = result.get("client", "python")
    if client == "wrk":
        print(f"client: wrk, {result['client_connections']} connections, "
              f"{'web on CPU 0, wrk on CPU 1' if result.get('pinned') else 'not pinned'}; "
              f"late starts GET {result['get_late_n']} (max {result['get_late_max_ms']} ms), "
              f"POST {result['post_late_n']}; the web's loop waited for a CPU "
              f"{result['get_web_runq_wait_ms']} ms over the GETs")
    else:
        print(f"client: python (httpx), {result['client_threads']} threads")
    print(f"GET job   at {result['get_rate_per_s']:g}/s: p50 {result['get_p50_ms']} ms, "
          f"p99 {result['get_p99_ms']} ms (achieved {result['get_achieved_per_s']}/s; web "
          f"{result['get_web_cpu_ms_per_req']} ms CPU/req, busy {result['get_web_busy']} "
          f"cores; harness {result['get_client_busy']})")
    print(f"POST job  at {result['post_rate_per_s']:g}/s: p50 {result['post_p50_ms']} ms, "
          f"p99 {result['post_p99_ms']} ms (store + SendMessage to {result['endpoint']}; "
          f"web {result['post_web_cpu_ms_per_req']} ms CPU/req, busy {result['post_web_busy']}"
          f" cores; harness {result['post_client_busy']})")
    print(f"SSE freshness: p50 {result['sse_fresh_p50_ms']} ms, "
          f"p99 {result['sse_fresh_p99_ms']} ms (store polled every 0.5 s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (about 30 s)")
    parser.add_argument("--endpoint", choices=("moto", "localstack"), default="moto")
    parser.add_argument("--get-rate", type=float, default=GET_RATE,
                        help=f"GET job requests per second (default {GET_RATE:g})")
    parser.add_argument("--post-rate", type=float, default=POST_RATE,
                        help=f"POST generate requests per second (default {POST_RATE:g})")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="the load generator (auto: wrk when on PATH, else python)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help=f"wrk's connections for the GETs (default {CONNECTIONS})")
    parser.add_argument("--pin", action="store_true",
                        help="wrk only: the web on CPU 0, wrk on CPU 1 (taskset)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"python client threads, one connection each (default {THREADS})")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-api-")
    ep = endpoints.start(args.endpoint, work)
    try:
        result = run(ep, os.path.join(work, "api"), "quick" if args.quick else "full",
                     args.get_rate, args.post_rate, args.threads, args.client,
                     args.connections, args.pin)
    finally:
        ep.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
