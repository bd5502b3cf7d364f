"""``vip-worker dev``: the embedded stack, all on 127.0.0.1, no AWS account.

Starts moto's SQS server on loopback, creates the ``articles`` and ``images``
queues with their dead-letter queues, starts ``vip-worker run`` with the bundled
plugins, sends a demo batch in the seed's exact message format, and shows each
message's story as the daemon logs it. Ctrl-C stops the daemon gracefully.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

QUEUES = ("articles", "images")
# Above the daemon's max_attempts (5), so vip-worker dead-letters with the reason first.
REDRIVE_MAX_RECEIVES = 10
SHOWN_EVENTS = {
    "poller.ready": "poller {poller} ready",
    "message.succeeded": "{type:<8} job {job_id} succeeded in {duration_s}s",
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
    urls = {}
    for name in QUEUES:
        dlq = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        policy = {"deadLetterTargetArn": arn, "maxReceiveCount": str(REDRIVE_MAX_RECEIVES)}
        urls[name] = client.create_queue(
            QueueName=name, Attributes={"RedrivePolicy": json.dumps(policy)})["QueueUrl"]
        urls[f"{name}-dlq"] = dlq
    return urls


def demo_messages(count: int) -> list[tuple[str, dict]]:
    """(queue, body) pairs in the seed's format; the last one is a bad request on purpose."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    messages = []
    for n in range(count):
        kind = QUEUES[n % 2]
        payload = ({"mode": "topic", "topic": f"Fantasy Football Strategies #{n}",
                    "wordCount": 1500, "tone": "Professional", "seoOptimization": True,
                    "includeImages": False}
                   if kind == "articles" else {"prompt": f"A stadium at dusk, picture {n}"})
        messages.append((kind, {"jobId": uuid.uuid4().hex[:24], "userId": "demo-user",
                                "type": kind, "timestamp": now, "payload": payload}))
    bad = {"jobId": uuid.uuid4().hex[:24], "userId": "demo-user", "type": "articles",
           "timestamp": now, "payload": {"mode": "no-such-mode", "topic": "x"}}
    messages.append(("articles", bad))
    return messages


def main(args) -> int:
    import boto3

    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = args.port or int(env.get("VIP_DEV_SQS_PORT", "0"))
    server, endpoint = start_sqs(port)
    print(f"dev: local SQS (moto) on {endpoint}", flush=True)
    client = boto3.client("sqs", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    urls = create_queues(client)
    env.update({"AWS_ENDPOINT_URL_SQS": endpoint, "ARTICLES_QUEUE_URL": urls["articles"],
                "IMAGES_QUEUE_URL": urls["images"]})
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vip_worker", "run", "--processes", str(args.processes)],
        env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    pending: set[str] = set()
    done = threading.Event()
    lock = threading.Lock()

    def follow() -> None:
        for line in daemon.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                print(line, end="")
                continue
            template = SHOWN_EVENTS.get(record.get("event"))
            if template:
                print("daemon: " + template.format_map(Missing(record)), flush=True)
            if record.get("event") in ("message.succeeded", "message.dead_lettered"):
                with lock:
                    pending.discard(record.get("job_id"))
                    if not pending:
                        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = 0
    try:
        messages = demo_messages(args.jobs)
        with lock:
            pending.update(body["jobId"] for _, body in messages)
        for queue, body in messages:
            client.send_message(QueueUrl=urls[queue], MessageBody=json.dumps(body))
        print(f"dev: sent {len(messages)} demo messages (one is a bad request, to show the "
              f"dead-letter path)", flush=True)
        deadline = time.monotonic() + args.timeout
        announced = False
        while not stop.is_set() and daemon.poll() is None:
            if done.wait(0.2) and not announced:
                announced = True
                if args.exit_when_done:
                    print("dev: demo batch done", flush=True)
                    break
                print("dev: demo batch done; serving until Ctrl-C", flush=True)
            if args.exit_when_done and time.monotonic() > deadline:
                print(f"dev: demo batch not done after {args.timeout}s", flush=True)
                code = 1
                break
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
        server.stop()
    if daemon.returncode not in (0, None) and code == 0:
        print(f"dev: daemon exited with {daemon.returncode}", flush=True)
        code = daemon.returncode
    return code


class Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
