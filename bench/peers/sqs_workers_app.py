"""sqs-workers with a no-op job, for bench/ (run in bench/.venvs/sqsworkers).

``python sqs_workers_app.py QUEUE_NAME``: one process, ``process_queue`` with 20 s long
polls; the endpoint comes from AWS_ENDPOINT_URL_SQS (127.0.0.1).
"""

import sys

import boto3
from sqs_workers import SQSEnv

env = SQSEnv(session=boto3.session.Session(region_name="us-east-1"), codec="json")
queue = env.queue(sys.argv[1] if len(sys.argv) > 1 else "bench")


@queue.processor("noop")
def noop(**kwargs):
    return None


if __name__ == "__main__":
    queue.process_queue(wait_second=20)
