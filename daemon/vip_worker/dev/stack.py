"""``vip-worker dev``: the embedded stack, all on 127.0.0.1, no AWS account, no MongoDB.

Starts moto's SQS server on loopback with the ``articles`` and ``images`` queues
and their dead-letter queues, a stub of the generation service (configurable
latency and failure rate), the embedded SQLite job store in a fresh state
directory, ``vip-worker run`` with the bundled plugins and the job API (``vip-worker
web``, open access on loopback: no key is configured). It then enqueues a
demo batch through the producer, exactly as the app would, and shows each job's
status and progress from the job store until the batch is done. Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from vip_worker import exitcodes

QUEUES = ("articles", "images")
# Above the daemon's max_attempts (5), so vip-worker dead-letters with the reason first.
REDRIVE_MAX_RECEIVES = 10
SHOWN_EVENTS = {
    "poller.ready": "poller {poller} ready",
    "message.retried": "{type:<8} job {job_id} retried in {delay_s}s: {error}",
    "message.dead_lettered": "{type:<8} job {job_id} dead-lettered: {error}",
}
# The store keeps only a job's latest step; the daemon logs each one (job.progress), then
# job.completed once the result is saved.
PROGRESS_EVENT = "job.progress"
COMPLETED_EVENT = "job.completed"
WATCH_EVERY_S = 0.1
# The store can show "completed" before its log lines reach us: hold that line until
# job.completed arrives (so every step before it was shown), at most this long.
HOLD_COMPLETED_S = 2.0
TERMINAL = ("completed", "failed", "cancelled")


def vip_worker_command(executable: str = sys.executable, cwd: str | None = None,
                       program: str = "vip-worker") -> str:
    """How to type ``program`` (default ``vip-worker``), installed beside this Python: in a
    checkout set up by ``make``, ``.venv/bin/vip-worker`` (it is not on the PATH unless the
    virtualenv is active); ``vip-worker`` when the PATH finds that same program."""
    beside = os.path.join(os.path.dirname(executable), program)
    if not os.path.exists(beside):
        return f"{executable} -m vip_worker"
    if shutil.which(program) == beside:
        return program
    relative = os.path.relpath(beside, cwd or os.getcwd())
    return beside if relative.startswith("..") else relative


def start_sqs(port: int):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    return server, f"http://{host}:{real_port}"


def create_queues(client) -> dict[str, str]:
    """The demo's queues, each with its DLQ, through a blocking ``SqsClient``."""
    from vip_worker.sqs.queues import queue_arn

    urls = {}
    for name in QUEUES:
        dlq = client.create_queue(f"{name}-dlq")
        policy = {"deadLetterTargetArn": queue_arn(client, dlq),
                  "maxReceiveCount": str(REDRIVE_MAX_RECEIVES)}
        urls[name] = client.create_queue(name, {"RedrivePolicy": json.dumps(policy)})
        urls[f"{name}-dlq"] = dlq
    return urls


def demo_payloads(count: int) -> list[tuple[str, dict]]:
    """(type, payload) pairs as the app sends them; the last is a bad request on purpose."""
    payloads = []
    for n in range(count):
        if n % 2 == 0:
            payloads.append(("articles", {
                "mode": "topic", "topic": f"Fantasy Football Strategies #{n}",
                "wordCount": 300, "tone": "Professional", "seoOptimization": True,
                "includeImages": False}))
        else:
            payloads.append(("images", {"prompt": f"A stadium at dusk, picture {n}",
                                        "size": "1024x1024"}))
    payloads.append(("articles", {"mode": "no-such-mode", "topic": "x"}))
    return payloads


@contextlib.contextmanager
def state_directory(given: str | None) -> Iterator[str]:
    """``given`` (made if missing, kept), else a fresh directory under the temporary
    directory, removed with everything in it when the block ends."""
    if given:
        os.makedirs(given, exist_ok=True)
        yield os.path.abspath(given)
        return
    made = tempfile.mkdtemp(prefix="vip-worker-dev-")
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def main(args) -> int:
    from vip_worker.dev.stubservice import StubGenerationService
    from vip_worker.sqs.local import LOCAL_AWS_ENV

    env = dict(os.environ)
    for name, value in LOCAL_AWS_ENV.items():
        env.setdefault(name, value)  # credentials of the user's own are kept: moto takes any
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for name in ("MONGODB_URI", "VIP_WORKER_MONGODB_URI", "AWS_PROFILE"):
        env.pop(name, None)  # the embedded stack never uses a real database or account
    port = args.port or int(env.get("VIP_DEV_SQS_PORT", "0"))
    server, endpoint = start_sqs(port)
    # Articles streamed (a 300-word one over ~5 s) and progress written every second, so
    # the demo shows progress moving (the user's own settings win).
    generation = StubGenerationService(latency_s=args.latency, failure_rate=args.failure_rate,
                                       stream=True, stream_step_s=0.4)
    env.setdefault("VIP_WORKER_PROGRESS_INTERVAL_S", "1")
    throttle_quota(args, generation, env)
    generation.start()
    try:
        with state_directory(args.state_dir) as state_dir:
            return serve(args, env, endpoint, generation.url, state_dir,
                         kept=bool(args.state_dir))
    finally:
        generation.stop()
        server.stop()


def throttle_quota(args, generation, env: dict[str, str]) -> None:
    """``--throttle-every`` / ``--quota-rpm``: the stub's 429 mode and a ``generation``
    quota table, so the demo shows deferrals and the fleet-wide pause."""
    every = getattr(args, "throttle_every", 0)
    rpm = getattr(args, "quota_rpm", 0)
    generation.throttle(every=every, retry_after_s=getattr(args, "retry_after", 10.0))
    if every or rpm:
        env["VIP_WORKER_QUOTAS"] = json.dumps({"generation": {"rpm": rpm}})
        throttling = f"one call in {every}" if every else "no call"
        print(f"dev: quota on generation calls: {rpm or 'no'} rpm limit; the stub answers "
              f"{throttling} with 429 (Retry-After {args.retry_after:g} s)", flush=True)


def serve(args, env: dict[str, str], endpoint: str, generation_url: str, state_dir: str,
          kept: bool) -> int:
    """Start the daemon against the local services, run the demo batch, stop the daemon."""
    from vip_worker import config
    from vip_worker.pipeline.producer import Producer
    from vip_worker.sqs.boto import connect

    client = connect(env["AWS_DEFAULT_REGION"], endpoint,
                     credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))
    urls = create_queues(client)
    env.update({"AWS_ENDPOINT_URL_SQS": endpoint, "ARTICLES_QUEUE_URL": urls["articles"],
                "IMAGES_QUEUE_URL": urls["images"], "FASTAPI_URL": generation_url,
                "VIP_WORKER_STATE_DIR": state_dir})
    print(f"dev: local SQS (moto) on {endpoint}\n"
          f"dev: stub generation service on {generation_url} "
          f"(latency {args.latency}s, failure rate {args.failure_rate})\n"
          f"dev: job store {state_dir}/jobs.sqlite3 "
          f"(see it: VIP_WORKER_STATE_DIR={state_dir} {vip_worker_command()} jobs list"
          f"{'' if kept else '; removed on exit, keep it with --state-dir DIR'})", flush=True)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vip_worker", "run", "--processes", str(args.processes)],
        env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    web, web_url = start_web(env)
    progress: queue.SimpleQueue = queue.SimpleQueue()
    reader = threading.Thread(target=follow, args=(daemon, progress), daemon=True)
    reader.start()
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum, frame) -> None:  # only record: the main thread says it
        stopped_by.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    producer = Producer(config.load(environ=env, require_queues=False), sqs_client=client)
    code = 0
    try:
        jobs = {producer.enqueue(kind, payload, user_id="demo-user"): kind
                for kind, payload in demo_payloads(args.jobs)}
        print(f"dev: enqueued {len(jobs)} demo jobs (the last is a bad request, to show the "
              f"failed/dead-letter path)", flush=True)
        code = watch(producer.store, jobs, daemon, stop, args, progress)
    finally:
        if stopped_by:
            name = "Ctrl-C" if stopped_by[0] == signal.SIGINT else signal.Signals(
                stopped_by[0]).name
            print(f"dev: {name}: stopping the daemon, the stub service and the local SQS",
                  flush=True)
        if daemon.poll() is None:
            # Fast stop (as Ctrl-C): nothing of the demo is in flight any more, and a
            # graceful stop would wait for the pollers' 20 s long polls to return.
            daemon.send_signal(signal.SIGINT)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        reader.join(timeout=5)
        producer.close()
        stop_web(web)
    if daemon.returncode not in (0, None) and code == 0:
        print(f"dev: daemon exited with {daemon.returncode}", flush=True)
        code = daemon.returncode
    if stopped_by:
        print("dev: stopped", flush=True)
        if stopped_by[0] == signal.SIGINT and code == exitcodes.OK:
            code = exitcodes.INTERRUPTED  # as a shell reports Ctrl-C
    return code


def start_web(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``vip-worker web`` on 127.0.0.1 (``VIP_DEV_WEB_PORT`` or a free port); its JSON log
    is dropped, its errors show. Prints its URL and a ``curl`` line once it answers."""
    import socket
    import urllib.request

    port = int(env.get("VIP_DEV_WEB_PORT", "0"))
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    web = subprocess.Popen([sys.executable, "-m", "vip_worker", "web", "--host", "127.0.0.1",
                            "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while web.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    if web.poll() is not None:
        print(f"dev: the job API did not start (exit {web.returncode})", flush=True)
        return web, url
    print(f"dev: dashboard on {url}/dashboard/ (open access on loopback)\n"
          f"dev: job API on {url} (open access on loopback, no key configured; "
          f"{url}/docs)\n"
          f"dev:   curl -s -X POST {url}/api/content/generate -H 'X-User-Id: demo-user' "
          f"-H 'Content-Type: application/json' -d '{{\"mode\": \"topic\", \"topic\": "
          f"\"Fantasy Football\", \"wordCount\": 300}}'\n"
          f"dev:   curl -s {url}/api/content/jobs -H 'X-User-Id: demo-user'", flush=True)
    return web, url


def stop_web(web: subprocess.Popen) -> None:
    if web.poll() is None:
        web.terminate()
        try:
            web.wait(timeout=15)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()


def watch(store, jobs: dict[str, str], daemon, stop: threading.Event, args,
          progress: queue.SimpleQueue | None = None) -> int:
    """Print each job's status changes and every progress step the daemon logs; return
    once all are done (or keep serving)."""
    shown: dict[str, tuple] = {}
    logged_done: set[str] = set()
    held: dict[str, float] = {}  # job -> when the store first showed it completed
    deadline = time.monotonic() + args.timeout
    announced = False

    def show(job_id: str, state: tuple, detail: str) -> None:
        shown[job_id] = state
        print(f"job {job_id} {jobs[job_id]:<8} {state[0]:<10} {state[1] or 0:>3}%  {detail}",
              flush=True)

    def show_steps() -> None:
        # Steps logged while the job runs, before the store shows the state after them.
        while progress is not None and not progress.empty():
            job_id, percent, step = progress.get()
            if percent is None:
                logged_done.add(job_id)
                continue
            before = shown.get(job_id, (None, 0, None))
            if job_id in jobs and before[0] not in TERMINAL and percent > (before[1] or 0):
                show(job_id, ("processing", percent, step), step)

    while not stop.is_set() and daemon.poll() is None:
        finished = 0
        for job_id in jobs:
            show_steps()
            job = store.get_job(job_id) or {}
            state = (job.get("status"), job.get("progress"), job.get("message"))
            if state[0] == "completed" and job_id not in logged_done and progress is not None:
                since = held.setdefault(job_id, time.monotonic())
                if time.monotonic() - since < HOLD_COMPLETED_S:
                    continue
            if state != shown.get(job_id):
                show(job_id, state, job.get("error") or job.get("message") or "")
            finished += shown[job_id][0] in TERMINAL
        if finished == len(jobs) and not announced:
            announced = True
            if args.exit_when_done:
                print("dev: demo batch done", flush=True)
                return exitcodes.OK
            print("dev: demo batch done; serving until Ctrl-C", flush=True)
        if args.exit_when_done and time.monotonic() > deadline:
            print(f"dev: demo batch not done after {args.timeout}s", flush=True)
            return exitcodes.FAILED
        stop.wait(WATCH_EVERY_S)
    return exitcodes.OK


def follow(daemon, progress: queue.SimpleQueue | None = None) -> None:
    """Echo the daemon's notable log lines, compactly; hand its progress steps to ``watch``."""
    for line in daemon.stdout:
        try:
            record = json.loads(line)
        except ValueError:
            print(line, end="")
            continue
        event = record.get("event")
        if event in (PROGRESS_EVENT, COMPLETED_EVENT) and progress is not None:
            # (job, percent, step); percent None: the job's result is saved.
            progress.put((record.get("job_id"), record.get("progress") or 0,
                          record.get("step") or "") if event == PROGRESS_EVENT
                         else (record.get("job_id"), None, None))
            continue
        template = SHOWN_EVENTS.get(event)
        if template:
            print("daemon: " + template.format_map(Missing(record)), flush=True)


class Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
