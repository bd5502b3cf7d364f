"""boto3 helpers for the harness: clients, queues, message bodies, a paced producer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable

import boto3
import botocore.config

DEFAULT_TIMESTAMP = "2025-01-15T10:30:00Z"


def client(url: str, pool: int = 10):
    config = botocore.config.Config(region_name="us-east-1", max_pool_connections=pool,
                                    retries={"mode": "standard", "max_attempts": 3},
                                    read_timeout=40, connect_timeout=5)
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client(
        "sqs", endpoint_url=url, config=config)


def make_queue(sqs, prefix: str, visibility_s: int = 60) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return sqs.create_queue(QueueName=name,
                            Attributes={"VisibilityTimeout": str(visibility_s)})["QueueUrl"]


def delete_queue(sqs, url: str) -> None:
    try:
        sqs.delete_queue(QueueUrl=url)
    except Exception:  # noqa: BLE001 - cleanup only; the endpoint goes away at the end anyway
        pass


def envelope(message_type: str, job_id: str, payload: dict | None = None) -> str:
    """A body in the daemon's envelope format (vip_worker.message)."""
    return json.dumps({"jobId": job_id, "userId": "bench", "type": message_type,
                       "timestamp": DEFAULT_TIMESTAMP, "payload": payload or {}},
                      separators=(",", ":"))


def depth(sqs, url: str) -> int:
    """Messages still in the queue: visible, in flight and delayed."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs.get(name, 0)) for name in names)


def entry(body) -> dict:
    """A SendMessageBatch entry from a body string, or from a dict of entry fields
    (``MessageBody`` and e.g. ``MessageAttributes``, as sqs-workers needs)."""
    return {"MessageBody": body} if isinstance(body, str) else dict(body)


def send_batch(sqs, url: str, bodies: list, delay_s: int = 0, sent=None) -> None:
    extra = {"DelaySeconds": delay_s} if delay_s else {}
    for start in range(0, len(bodies), 10):
        chunk = bodies[start:start + 10]
        response = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), **entry(body), **extra} for i, body in enumerate(chunk)])
        if sent is not None:
            sent.add(len(chunk) - len(response.get("Failed", [])))
        if response.get("Failed"):
            raise RuntimeError(f"send_message_batch failed: {response['Failed'][:2]}")


class Sent:
    """How many messages the harness has queued so far (thread-safe)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.n += n


def fill(sqs, url: str, bodies: list, threads: int = 4, delay_s: int = 0,
         sent: Sent | None = None) -> None:
    """Send every body (batches of 10) from a few threads; returns when all are queued.

    ``delay_s``: every message stays invisible that long (DelaySeconds), so a consumer
    already polling sees the whole backlog appear at once, after the fill.
    """
    chunks = [bodies[i:i + 10] for i in range(0, len(bodies), 10)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker():
        while True:
            with lock:
                if not chunks or errors:
                    return
                chunk = chunks.pop()
            try:
                send_batch(sqs, url, chunk, delay_s, sent)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                return

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


class PacedProducer(threading.Thread):
    """Sends ``total`` bodies in batches of 10, keeping ``sent - consumed() <= backlog``.

    ``consumed`` reads the consumer's own progress (its log or progress file), so pacing
    costs the endpoint nothing. On LocalStack (flat with depth) ``backlog`` may be large.
    """

    def __init__(self, sqs, url: str, bodies: list, consumed: Callable[[], int],
                 backlog: int, sent: Sent | None = None) -> None:
        super().__init__(daemon=True, name="producer")
        self.sqs = sqs
        self.url = url
        self.bodies = bodies
        self.consumed = consumed
        self.backlog = backlog
        self.sent = 0
        self.total = sent
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            while self.sent < len(self.bodies) and not self.stop.is_set():
                if self.sent - self.consumed() >= self.backlog:
                    time.sleep(0.005)
                    continue
                chunk = self.bodies[self.sent:self.sent + 10]
                send_batch(self.sqs, self.url, chunk, sent=self.total)
                self.sent += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc
        self.finished_at = time.monotonic()
