"""Helpers for the ops commands' tests: run a command in-process, a config, dead letters."""

from __future__ import annotations

import json

from tests.support.daemon import write_config
from tests.support.sqs import envelope
from vip_worker import cli
from vip_worker.sqs import boto


def make_config(tmp_path, endpoint, queues, **settings):
    """A config file for the ops commands: the queues, the endpoint, dirs under tmp_path."""
    settings.setdefault("state_dir", str(tmp_path / "state"))
    settings.setdefault("runtime_dir", str(tmp_path / "run"))
    return str(write_config(tmp_path / "ops.toml", queues, sqs_endpoint_url=endpoint,
                            **settings))


def run(capsys, *argv):
    """``vip-worker *argv`` in this process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_letter(sqs, dlq_url, job_id, error="boom", group=None, **extra_attrs):
    """A message as the daemon dead-letters it: the seed envelope plus the vip_* reason."""
    attrs = {
        "vip_error_class": {"DataType": "String", "StringValue": "PermanentError"},
        "vip_error": {"DataType": "String", "StringValue": error},
        "vip_attempts": {"DataType": "Number", "StringValue": "5"},
        "vip_source_queue": {"DataType": "String", "StringValue": "work"},
        "vip_source_message_id": {"DataType": "String", "StringValue": f"src-{job_id}"},
    }
    attrs.update({k: {"DataType": "String", "StringValue": v} for k, v in extra_attrs.items()})
    kwargs = {"MessageGroupId": group, "MessageDeduplicationId": job_id} if group else {}
    return sqs.send_message(QueueUrl=dlq_url, MessageBody=envelope(job_id, "sleep"),
                            MessageAttributes=attrs, **kwargs)["MessageId"]


def receive_all(sqs, url):
    """Every message now in ``url`` (short polls until one comes back empty), deleted."""
    got = []
    while True:
        response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                       MessageAttributeNames=["All"])
        messages = response.get("Messages", [])
        if not messages:
            return got
        for message in messages:
            got.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def job_ids(messages):
    return sorted(json.loads(m["Body"])["jobId"] for m in messages)


class Wrapper:
    """The real client, with some methods replaced: ``Wrapper(client, name=callable)``."""

    def __init__(self, client, **overrides):
        self.client = client
        self.overrides = overrides
        self.calls = []

    def __getattr__(self, name):
        self.calls.append(name)
        return self.overrides.get(name) or getattr(self.client, name)


def use_client(monkeypatch, factory):
    """Make the commands build ``factory(real_client)`` instead of a plain boto3 client."""
    real = boto.make_client
    monkeypatch.setattr(boto, "make_client", lambda *a, **k: factory(real(*a, **k)))
