"""Celery with the SQS broker and a no-op task, for bench/ (run in bench/.venvs/celery).

Worker: ``celery -A celery_app worker -Q bench ...`` (see bench.peers for the flags).
Bodies: ``python celery_app.py bodies COUNT FILE`` writes COUNT message bodies exactly as
kombu's SQS transport would send them (one per line), so the harness can queue them with
SendMessageBatch like every other consumer's messages.

Settings (docs/benchmarks.md): task_acks_late=True (a message is deleted after its task
ran, as vip-worker does), long polls of 20 s, no result backend, prefetch multiplier 4
(Celery's default).
"""

import os
import sys
from urllib.parse import urlsplit

from celery import Celery

ENDPOINT = urlsplit(os.environ.get("BENCH_ENDPOINT", "http://127.0.0.1:1"))
QUEUE_URL = os.environ.get("BENCH_QUEUE_URL", "http://127.0.0.1:1/queue/bench")

app = Celery("bench_celery", broker=f"sqs://testing:testing@{ENDPOINT.hostname}:{ENDPOINT.port}")
app.conf.update(
    broker_transport_options={
        "region": "us-east-1",
        "is_secure": False,
        "predefined_queues": {"bench": {"url": QUEUE_URL, "access_key_id": "testing",
                                        "secret_access_key": "testing"}},
        "wait_time_seconds": 20,
        "visibility_timeout": 60,
        "polling_interval": 0,
    },
    task_default_queue="bench",
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop():
    return None


def write_bodies(count: int, path: str) -> None:
    from kombu.transport.SQS import Channel

    bodies = []

    class Capture:
        def send_message(self, **kwargs):
            bodies.append(kwargs["MessageBody"])

        def get_queue_attributes(self, **kwargs):  # queue_declare asks for the size
            return {"Attributes": {"ApproximateNumberOfMessages": "0"}}

    Channel.sqs = lambda self, queue=None: Capture()
    for _ in range(count):
        noop.delay()
    with open(path, "w") as fh:
        fh.write("\n".join(bodies) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "bodies":
        write_bodies(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: celery_app.py bodies COUNT FILE")
