"""``vip-worker dev``: the embedded stack, all on 127.0.0.1, no AWS account, no MongoDB.

Starts moto's SQS server on loopback with the ``articles`` and ``images`` queues
and their dead-letter queues, a stub of the generation service (configurable
latency and failure rate), the embedded SQLite job store in a fresh state
directory, and ``vip-worker run`` with the bundled plugins. It then enqueues a
demo batch through the producer, exactly as the app would, and shows each job's
status and progress from the job store until the batch is done. Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

QUEUES = ("articles", "images")
# Above the daemon's max_attempts (5), so vip-worker dead-letters with the reason first.
REDRIVE_MAX_RECEIVES = 10
SHOWN_EVENTS = {
    "poller.ready": "poller {poller} ready",
    "message.retried": "{type:<8} job {job_id} retried in {delay_s}s: {error}",
    "message.dead_lettered": "{type:<8} job {job_id} dead-lettered: {error}",
}


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
    generation = StubGenerationService(latency_s=args.latency, failure_rate=args.failure_rate)
    generation.start()
    try:
        with state_directory(args.state_dir) as state_dir:
            return serve(args, env, endpoint, generation.url, state_dir,
                         kept=bool(args.state_dir))
    finally:
        generation.stop()
        server.stop()


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
          f"(see it: VIP_WORKER_STATE_DIR={state_dir} vip-worker jobs list"
          f"{'' if kept else '; removed on exit, keep it with --state-dir DIR'})", flush=True)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vip_worker", "run", "--processes", str(args.processes)],
        env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    reader = threading.Thread(target=follow, args=(daemon,), daemon=True)
    reader.start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = Producer(config.load(environ=env, require_queues=False), sqs_client=client)
    code = 0
    try:
        jobs = {producer.enqueue(kind, payload, user_id="demo-user"): kind
                for kind, payload in demo_payloads(args.jobs)}
        print(f"dev: enqueued {len(jobs)} demo jobs (the last is a bad request, to show the "
              f"failed/dead-letter path)", flush=True)
        code = watch(producer.store, jobs, daemon, stop, args)
    finally:
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
    if daemon.returncode not in (0, None) and code == 0:
        print(f"dev: daemon exited with {daemon.returncode}", flush=True)
        code = daemon.returncode
    return code


def watch(store, jobs: dict[str, str], daemon, stop: threading.Event, args) -> int:
    """Print each job's status changes; return once all are done (or keep serving)."""
    shown: dict[str, tuple] = {}
    deadline = time.monotonic() + args.timeout
    announced = False
    while not stop.is_set() and daemon.poll() is None:
        finished = 0
        for job_id, kind in jobs.items():
            job = store.get_job(job_id) or {}
            state = (job.get("status"), job.get("progress"), job.get("message"))
            if state != shown.get(job_id):
                shown[job_id] = state
                detail = job.get("error") or job.get("message") or ""
                print(f"job {job_id} {kind:<8} {state[0]:<10} {state[1] or 0:>3}%  {detail}",
                      flush=True)
            finished += job.get("status") in ("completed", "failed")
        if finished == len(jobs) and not announced:
            announced = True
            if args.exit_when_done:
                print("dev: demo batch done", flush=True)
                return 0
            print("dev: demo batch done; serving until Ctrl-C", flush=True)
        if args.exit_when_done and time.monotonic() > deadline:
            print(f"dev: demo batch not done after {args.timeout}s", flush=True)
            return 1
        stop.wait(0.25)
    return 0


def follow(daemon) -> None:
    """Echo the daemon's notable log lines, compactly."""
    for line in daemon.stdout:
        try:
            record = json.loads(line)
        except ValueError:
            print(line, end="")
            continue
        template = SHOWN_EVENTS.get(record.get("event"))
        if template:
            print("daemon: " + template.format_map(Missing(record)), flush=True)


class Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
