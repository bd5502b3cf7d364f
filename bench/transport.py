"""The SQS calls alone, through each transport: CPU per message of Receive + DeleteBatch.

    python -m bench.transport [--count N] [--endpoint moto|localstack]

Starts its own endpoint on 127.0.0.1, fills a queue with ``--count`` messages and
drains it with nothing but ReceiveMessage(10) + DeleteMessageBatch, once with a
boto3 client (the bare loop's calls) and once with ``vip_worker.sqs.wire`` on a
uvloop loop; then again in the other order. The figure is this process's CPU
(user + sys) per message: what each transport costs before the daemon does
anything with a message. Prints the figures, then a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import uvloop

from bench import endpoint, sqsutil
from vip_worker.sqs.boto import make_client
from vip_worker.sqs.wire import WireSqs, open_sqs


def drain_boto3(client, url: str, count: int) -> float:
    started, handled = time.process_time(), 0
    while handled < count:
        messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=1).get("Messages", [])
        if messages:
            client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)])
        handled += len(messages)
    return (time.process_time() - started) / handled


async def drain_wire(endpoint_url: str, url: str, count: int) -> float:
    sqs, _ = open_sqs("us-east-1", endpoint_url, 1, "wire")
    assert isinstance(sqs, WireSqs)
    try:
        await sqs.receive(url, 1, 0, 0)  # credentials read, connection open
        started, handled = time.process_time(), 0
        while handled < count:
            messages = await sqs.receive(url, 10, 1, 30)
            if messages:
                await sqs.delete_batch(url, [(str(i), m["ReceiptHandle"])
                                             for i, m in enumerate(messages)])
            handled += len(messages)
        return (time.process_time() - started) / handled
    finally:
        sqs.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--endpoint", choices=("moto", "localstack"), default="localstack")
    args = parser.parse_args(argv)
    kind = args.endpoint
    if kind == "localstack" and not endpoint.localstack_available():
        print("bench.transport: LocalStack unavailable, using moto", file=sys.stderr)
        kind = "moto"
    os.environ.update(endpoint.base_env())
    workdir = tempfile.mkdtemp(prefix="vip-bench-transport-")
    ep = endpoint.start(kind, workdir)
    figures: dict[str, list[float]] = {"boto3": [], "wire": []}
    try:
        endpoint.wait_ready(ep, ep.log)
        admin = sqsutil.client(ep.url)
        boto3_client = make_client("us-east-1", ep.url)
        for order in (("boto3", "wire"), ("wire", "boto3")):
            for name in order:
                url = sqsutil.make_queue(admin, "transport")
                sqsutil.fill(admin, url, [sqsutil.envelope("noop", str(n))
                                          for n in range(args.count)])
                if name == "boto3":
                    figures[name].append(drain_boto3(boto3_client, url, args.count))
                else:
                    figures[name].append(uvloop.run(drain_wire(ep.url, url, args.count)))
                sqsutil.delete_queue(admin, url)
    finally:
        ep.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    us = {name: round(statistics.median(values) * 1e6, 1) for name, values in figures.items()}
    print(f"endpoint {kind}, {args.count} messages per drain, 2 drains each, median:")
    for name, value in us.items():
        print(f"  {name:6} ReceiveMessage(10) + DeleteMessageBatch: {value:7.1f} us CPU/msg")
    print(f"  boto3 / wire: {us['boto3'] / us['wire']:.2f}x")
    print(json.dumps({"endpoint": kind, "count": args.count, "cpu_us_per_msg": us,
                      "boto3_over_wire": round(us["boto3"] / us["wire"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
