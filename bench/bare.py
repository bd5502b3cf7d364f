"""The bare boto3 loop: the least a consumer can do. ReceiveMessage(10) + DeleteMessageBatch.

``python -m bench.bare --url QUEUE_URL --processes N --progress DIR`` forks N processes;
each makes its own client after fork and loops: one long poll (MaxNumberOfMessages=10,
WaitTimeSeconds=20), one DeleteMessageBatch of what came, nothing else (no parsing, no
logging). Each overwrites its running count in ``DIR/bare-<i>`` after every batch (one
pwrite per 10 messages, ~0.3 us a message), so the harness can pace its producer and see
the end of a drain. TERM stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def write_count(fd: int, count: int) -> None:
    os.pwrite(fd, f"{count:>12}\n".encode(), 0)


def loop(url: str, endpoint: str, progress: str, wait_s: int) -> None:
    import boto3

    sqs = boto3.session.Session().client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT, 0o644)
    count = 0
    write_count(fd, count)
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=wait_s).get("Messages", [])
        if not messages:
            continue
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        count += len(messages)
        write_count(fd, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--progress", required=True, help="directory for the count files")
    parser.add_argument("--wait", type=int, default=20)
    args = parser.parse_args(argv)
    pids = []
    for index in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                loop(args.url, args.endpoint, os.path.join(args.progress, f"bare-{index}"),
                     args.wait)
            finally:
                os._exit(0)
        pids.append(pid)

    def stop(signum, frame):
        for child in pids:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    for child in pids:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
