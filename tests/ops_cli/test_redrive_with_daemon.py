"""``vip-worker dlq redrive`` while the real daemon runs and its handler still fails.

The issue "No job left behind": the daemon dead-lettered the poison messages again at once,
the redrive moved them back, and it never ended. Here 5 poison jobs (the testjobs plugin's
``fail`` handler raises PermanentError); the redrive runs in this process, the daemon as
processes. Each job must be handled exactly once more and land in the DLQ once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid

import pytest

from tests.support.daemon import ledger_lines
from tests.support.ops_cli import Wrapper, make_config, run, use_client
from tests.support.sqs import envelope, queue_counts
from tests.support.wait import wait_until
from vip_worker.sqs.queues import queue_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def poisoned(sqs, make_queue, start_daemon, ledger, tmp_path, sqs_endpoint):
    """A running daemon whose queue's DLQ holds 5 jobs it dead-lettered (handled once)."""
    urls = make_queue("redrive")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1)
    jobs = sorted(uuid.uuid4().hex[:24] for _ in range(5))
    for job in jobs:
        sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job, "fail"))
    daemon.wait_for("message.dead_lettered", count=5)
    wait_until(lambda: queue_counts(sqs, urls["dlq"]) == (5, 0), 10, message="5 dead letters")
    urls.update(daemon=daemon, jobs=jobs, config=make_config(
        tmp_path, sqs_endpoint, {"work": {"url": urls["url"]}}),
        journal=tmp_path / "state" / "redrive" / f"{queue_name(urls['dlq'])}.journal")
    return urls


def starts(ledger, jobs):
    return {job: len(ledger_lines(ledger, "start", job)) for job in jobs}


def settled(sqs, poisoned, ledger):
    """The daemon has dead-lettered every redriven job again: 5 in the DLQ, 2 starts each."""
    return (queue_counts(sqs, poisoned["dlq"]) == (5, 0)
            and queue_counts(sqs, poisoned["url"]) == (0, 0)
            and all(n >= 2 for n in starts(ledger, poisoned["jobs"]).values()))


def one_per_receive(client, after_send=None):
    """The client, receiving one message per call (the daemon's copies interleave with the
    originals), calling ``after_send(n)`` after the n-th SendMessageBatch returns."""
    sends = []

    def receive_message(**kwargs):
        return client.receive_message(**{**kwargs, "MaxNumberOfMessages": 1})

    def send_message_batch(**kwargs):
        response = client.send_message_batch(**kwargs)
        sends.append(kwargs)
        if after_send is not None:
            after_send(len(sends))
        return response

    return Wrapper(client, receive_message=receive_message,
                   send_message_batch=send_message_batch)


def test_a_redrive_while_the_daemon_fails_again_ends_and_moves_each_job_once(
        sqs, poisoned, ledger, capsys):
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", poisoned["config"])
    assert code == 0, err
    assert "redriving the 5 message(s)" in out
    assert "moved 5, skipped 0 (already sent), failed 0" in out

    poisoned["daemon"].wait_until(lambda: settled(sqs, poisoned, ledger), 30,
                                  "the 5 redriven jobs dead-lettered again")
    assert starts(ledger, poisoned["jobs"]) == dict.fromkeys(poisoned["jobs"], 2)
    assert not poisoned["journal"].exists()


def test_copies_that_come_back_during_the_redrive_are_left_in_the_dlq(
        sqs, poisoned, ledger, capsys, monkeypatch):
    use_client(monkeypatch, one_per_receive)
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", poisoned["config"])
    assert code == 0, err
    assert "moved 5, skipped 0 (already sent), failed 0" in out

    poisoned["daemon"].wait_until(lambda: settled(sqs, poisoned, ledger), 30,
                                  "the 5 redriven jobs dead-lettered again")
    assert starts(ledger, poisoned["jobs"]) == dict.fromkeys(poisoned["jobs"], 2)


def test_ctrl_c_midway_then_the_same_command_again_moves_each_job_once(
        sqs, poisoned, ledger, capsys, monkeypatch):
    def ctrl_c_after_two(sends):
        if sends == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the batch is in hand

    use_client(monkeypatch, lambda client: one_per_receive(client, ctrl_c_after_two))
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", poisoned["config"])
    assert code == 130, err
    assert "moved 2, skipped 0 (already sent), failed 0" in out
    said = re.search(r"interrupted: (.*); run the same command again to continue "
                     r"\(journal: (.*)\)", err)
    assert said, err
    progress = said.group(1)
    assert progress == ("2 of the 5 message(s) the DLQ held when this redrive began are "
                        "moved")  # the batch in hand was finished: nothing in doubt
    assert said.group(2) == str(poisoned["journal"])
    rows = [json.loads(line) for line in poisoned["journal"].read_text().splitlines()]
    assert rows[0]["run"]["budget"] == 5
    assert sorted(r["state"] for r in rows[1:]) == ["deleted", "deleted"]

    # The 2 moved jobs fail again meanwhile: their copies are in the DLQ when the run continues.
    poisoned["daemon"].wait_until(
        lambda: sorted(starts(ledger, poisoned["jobs"]).values()) == [1, 1, 1, 2, 2], 30,
        "the 2 moved jobs handled again")
    wait_until(lambda: queue_counts(sqs, poisoned["dlq"]) == (5, 0), 30,
               message="3 originals and 2 copies in the DLQ")

    monkeypatch.undo()
    use_client(monkeypatch, one_per_receive)
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", poisoned["config"])
    assert code == 0, err
    assert f"continuing the redrive in {poisoned['journal']}: {progress}\n" in out
    assert "moved 3, skipped 0 (already sent), failed 0" in out

    poisoned["daemon"].wait_until(lambda: settled(sqs, poisoned, ledger), 30,
                                  "the 5 redriven jobs dead-lettered again")
    assert starts(ledger, poisoned["jobs"]) == dict.fromkeys(poisoned["jobs"], 2)
    assert not poisoned["journal"].exists()
