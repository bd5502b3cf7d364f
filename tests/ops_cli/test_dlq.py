"""``vip-worker dlq peek`` and ``dlq redrive`` against moto's server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter

import pytest

from tests.support.ops_cli import (
    Wrapper,
    dead_letter,
    job_ids,
    make_config,
    receive_all,
    run,
    use_client,
)
from tests.support.sqs import queue_counts
from tests.support.wait import wait_until
from vip_worker.ops import dlq, redrive
from vip_worker.ops.journal import Journal, JournalBusy
from vip_worker.sqs.api import ClientError
from vip_worker.sqs.boto import SqsClient
from vip_worker.sqs.queues import queue_name

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path, sqs_endpoint, make_queue):
    """A queue ``work`` with a RedrivePolicy DLQ, and a config naming it."""
    urls = make_queue("ops")
    urls["config"] = make_config(tmp_path, sqs_endpoint, {"work": {"url": urls["url"]}})
    return urls


def test_peek_shows_the_reason_and_leaves_the_messages(sqs, setup, capsys):
    ids = [uuid.uuid4().hex[:24] for _ in range(3)]
    for n, job in enumerate(ids):
        dead_letter(sqs, setup["dlq"], job, error=f"generation failed #{n}")
    sqs.send_message(QueueUrl=setup["dlq"], MessageBody="{not json")

    code, out, _ = run(capsys, "dlq", "peek", "work", "--config", setup["config"], "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["dlq_url"] == setup["dlq"]
    shown = {m["job_id"]: m for m in doc["messages"]}
    assert set(ids) <= set(shown) and None in shown and len(shown) == 4
    first = shown[ids[0]]
    assert first["type"] == "sleep" and first["receive_count"] == 1 and first["sent_at"]
    assert first["reason"] == {"vip_error_class": "PermanentError",
                               "vip_error": "generation failed #0", "vip_attempts": "5",
                               "vip_source_queue": "work",
                               "vip_source_message_id": f"src-{ids[0]}"}
    # Left in place, and visible again at once.
    assert queue_counts(sqs, setup["dlq"]) == (4, 0)
    again = sqs.receive_message(QueueUrl=setup["dlq"], MaxNumberOfMessages=10,
                                VisibilityTimeout=30)["Messages"]
    assert len(again) == 4

    for m in again:
        sqs.change_message_visibility(QueueUrl=setup["dlq"], ReceiptHandle=m["ReceiptHandle"],
                                      VisibilityTimeout=0)
    code, out, _ = run(capsys, "dlq", "peek", "work", "--config", setup["config"], "-n", "2")
    assert code == 0
    assert "2 message(s) shown, left in place" in out
    assert "vip_error_class=PermanentError" in out and "vip_error: generation failed" in out
    assert queue_counts(sqs, setup["dlq"]) == (4, 0)


def test_peek_says_what_a_json_body_lacks_instead_of_none(sqs, setup, capsys):
    sqs.send_message(QueueUrl=setup["dlq"], MessageBody=json.dumps({"type": "images"}))
    sqs.send_message(QueueUrl=setup["dlq"], MessageBody=json.dumps({"hello": 1}))
    code, out, _ = run(capsys, "dlq", "peek", "work", "--config", setup["config"])
    assert code == 0
    assert "None" not in out
    assert "  no jobId  type images  received 1x" in out
    assert "  no jobId  no type  received 1x" in out


def test_redrive_without_the_move_api_moves_each_message_once(sqs, setup, capsys, tmp_path):
    ids = [uuid.uuid4().hex[:24] for _ in range(13)]  # more than one batch
    for job in ids:
        dead_letter(sqs, setup["dlq"], job, trace="t-" + job)

    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"])
    assert code == 0, err
    assert "StartMessageMoveTask" not in out  # the manual move unless --move-task
    assert "redriving the 13 message(s)" in out
    assert "moved 13, skipped 0 (already sent), failed 0" in out
    assert queue_counts(sqs, setup["dlq"]) == (0, 0)
    moved = receive_all(sqs, setup["url"])
    assert job_ids(moved) == sorted(ids)
    for message in moved:
        attrs = message["MessageAttributes"]
        assert not set(attrs) & set(dlq.REASON_ATTRIBUTES)
        assert attrs["trace"]["StringValue"] == "t-" + json.loads(message["Body"])["jobId"]
        assert attrs[redrive.REDRIVEN_FROM]["StringValue"]
    journal = tmp_path / "state" / "redrive" / f"{queue_name(setup['dlq'])}.journal"
    assert not journal.exists()  # nothing pending: removed


def test_redrive_max_moves_only_that_many(sqs, setup, capsys):
    for _ in range(5):
        dead_letter(sqs, setup["dlq"], uuid.uuid4().hex[:24])
    code, out, _ = run(capsys, "dlq", "redrive", "work", "--config", setup["config"],
                       "--max", "3")
    assert code == 0
    assert "moved 3, skipped 0" in out
    assert queue_counts(sqs, setup["dlq"])[0] == 2 and len(receive_all(sqs, setup["url"])) == 3


def test_redrive_uses_the_move_task_when_the_endpoint_has_it(sqs, setup, make_queue, capsys,
                                                            monkeypatch):
    started = []

    def start_message_move_task(**kwargs):
        started.append(kwargs)
        return {"TaskHandle": "task-handle-1"}

    wrappers = []

    def factory(client):
        wrappers.append(Wrapper(client, start_message_move_task=start_message_move_task))
        return wrappers[-1]

    use_client(monkeypatch, factory)
    dead_letter(sqs, setup["dlq"], "j1")
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"],
                         "--move-task")
    assert code == 0
    assert "task handle: task-handle-1" in out
    assert "warning: SQS's move task is not bounded" in err
    assert "may also move messages dead-lettered again" in err
    dlq_arn = sqs.get_queue_attributes(QueueUrl=setup["dlq"], AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    assert started == [{"SourceArn": dlq_arn}]
    assert "receive_message" not in wrappers[0].calls  # no manual move
    assert queue_counts(sqs, setup["dlq"]) == (1, 0)

    other = make_queue("other", dlq=False)["url"]
    code, out, _ = run(capsys, "dlq", "redrive", "work", "--config", setup["config"],
                       "--to", other, "--move-task")
    other_arn = sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    assert code == 0 and started[-1] == {"SourceArn": dlq_arn, "DestinationArn": other_arn}


def test_a_redrive_that_stops_after_sending_deletes_but_never_resends(sqs, setup, capsys,
                                                                      monkeypatch, tmp_path):
    ids = [uuid.uuid4().hex[:24] for _ in range(4)]
    for job in ids:
        dead_letter(sqs, setup["dlq"], job)

    def crash(**kwargs):
        raise RuntimeError("crashed between send and delete")

    use_client(monkeypatch, lambda client: Wrapper(client, delete_message_batch=crash))
    with pytest.raises(RuntimeError, match="crashed"):
        run(capsys, "dlq", "redrive", "work", "--config", setup["config"], "--max", "10")
    journal = tmp_path / "state" / "redrive" / f"{queue_name(setup['dlq'])}.journal"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0] == {"run": {"budget": 4, "started_at": lines[0]["run"]["started_at"]}}
    assert Counter(line["state"] for line in lines[1:]) == {"sent": 4}
    assert queue_counts(sqs, setup["dlq"]) == (4, 0)  # released when the run failed

    monkeypatch.undo()
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"],
                         "--move-task")
    assert code == 0, err
    assert "an unfinished redrive is in" in out  # not a move task: the journal's way
    assert ("continuing the redrive in " + str(journal) + ": 0 of the 4 message(s) the DLQ "
            "held when this redrive began are moved; 4 sent, still to be deleted") in out
    assert "moved 0, skipped 4 (already sent), failed 0" in out
    assert queue_counts(sqs, setup["dlq"]) == (0, 0)
    assert job_ids(receive_all(sqs, setup["url"])) == sorted(ids)  # each exactly once
    assert not journal.exists()


def test_a_refused_send_is_counted_and_left_in_the_dlq(sqs, setup, capsys, monkeypatch):
    for _ in range(3):
        dead_letter(sqs, setup["dlq"], uuid.uuid4().hex[:24])

    def refuse_first(client):
        def send_message_batch(QueueUrl, Entries):
            response = client.send_message_batch(QueueUrl=QueueUrl, Entries=Entries[1:])
            response.setdefault("Failed", []).append(
                {"Id": Entries[0]["Id"], "Code": "InternalError", "SenderFault": False})
            return response
        return Wrapper(client, send_message_batch=send_message_batch)

    use_client(monkeypatch, refuse_first)
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"])
    assert code == 69
    assert "moved 2, skipped 0 (already sent), failed 1" in out
    assert "send to" in err and "InternalError" in err
    assert queue_counts(sqs, setup["dlq"]) == (0, 1)  # kept out of this run's way, not lost
    assert len(receive_all(sqs, setup["url"])) == 2


def test_a_killed_redrive_of_a_fifo_dlq_resumes_exactly_once(sqs, make_queue, tmp_path):
    """Killed inside SendMessageBatch after SQS took the batch: the journal says "sending".

    The resend carries the DLQ MessageId as deduplication id, so the FIFO target
    drops it; the group and the order are kept. Killed means no release either:
    the run's short visibility must pass before the next run sees the messages.
    """
    urls = make_queue("fifo", fifo=True)
    ids = [f"job{n}" for n in range(3)]
    for job in ids:
        dead_letter(sqs, urls["dlq"], job, group="g1")

    class Killed(BaseException):
        pass

    def send_then_die(**kwargs):
        sqs.send_message_batch(**kwargs)
        raise Killed()

    def no_release(**kwargs):
        raise Killed()

    path = str(tmp_path / "fifo.journal")
    crashing = SqsClient(Wrapper(sqs, send_message_batch=send_then_die,
                                 change_message_visibility_batch=no_release))
    with Journal(path) as journal, pytest.raises(Killed):
        redrive.move_messages(crashing, urls["dlq"], lambda m: urls["url"], journal,
                              redrive.RedriveResult(), visibility_s=1)
    result = redrive.RedriveResult()
    with Journal(path) as journal:
        assert set(journal.pending().values()) == {"sending"}
        wait_until(lambda: queue_counts(sqs, urls["dlq"])[0] == 3, 10,  # the 1 s visibility
                   message="the 3 dead letters visible again")
        redrive.move_messages(SqsClient(sqs), urls["dlq"], lambda m: urls["url"], journal,
                              result)
    assert (result.moved, result.resent, result.failed) == (3, 3, 0)
    moved = receive_all(sqs, urls["url"])
    assert [json.loads(m["Body"])["jobId"] for m in moved] == ids  # once each, in order
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)


def test_unknown_queue_and_missing_dlq_are_named(sqs, setup, make_queue, capsys, tmp_path,
                                                 sqs_endpoint):
    code, _, err = run(capsys, "dlq", "peek", "nosuch", "--config", setup["config"])
    assert code == 64
    assert "'nosuch'" in err and "configured: work" in err

    code, _, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"],
                       "--to", "no-such-queue-xyz")
    assert code == 64 and "no-such-queue-xyz" in err and "no such queue" in err

    bare = make_queue("bare", dlq=False)["url"]
    config = make_config(tmp_path, sqs_endpoint, {"bare": {"url": bare}})
    code, _, err = run(capsys, "dlq", "peek", "bare", "--config", config)
    assert code == 78 and "queue bare has no dead-letter queue" in err


def test_the_journal_admits_one_redrive_at_a_time(tmp_path):
    path = str(tmp_path / "j.journal")
    with Journal(path) as journal:
        journal.record([{"id": "m1", "state": "sent"}])
        with pytest.raises(JournalBusy):
            Journal(path)
    with Journal(path) as journal:
        assert journal.pending() == {"m1": "sent"}
        journal.record([{"id": "m1", "state": "deleted"}])
    assert not os.path.exists(path)


def test_an_sqs_error_midway_says_where_the_redrive_stands(sqs, setup, capsys, monkeypatch,
                                                          tmp_path):
    for _ in range(3):
        dead_letter(sqs, setup["dlq"], uuid.uuid4().hex[:24])
    receives = []

    def one_then_outage(client):
        def receive_message(**kwargs):
            receives.append(kwargs)
            if len(receives) > 1:
                raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}},
                                  "ReceiveMessage")
            return client.receive_message(**{**kwargs, "MaxNumberOfMessages": 1})
        return Wrapper(client, receive_message=receive_message)

    use_client(monkeypatch, one_then_outage)
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"])
    journal = tmp_path / "state" / "redrive" / f"{queue_name(setup['dlq'])}.journal"
    assert code == 69
    assert "ServiceUnavailable" in err
    assert ("1 of the 3 message(s) the DLQ held when this redrive began are moved; run the "
            f"same command again to continue (journal: {journal})") in out

    monkeypatch.undo()
    code, out, err = run(capsys, "dlq", "redrive", "work", "--config", setup["config"])
    assert code == 0, err
    assert "moved 2, skipped 0 (already sent), failed 0" in out
    assert len(receive_all(sqs, setup["url"])) == 3 and not journal.exists()
