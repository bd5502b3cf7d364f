"""The dashboard's selective dead-letter actions in ``ops`` against moto: a redrive that
moves only the messages ``select`` picks (the rest left in the DLQ, visible again), and
``dlq.discard`` deleting only the picked ones."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.ops_cli import dead_letter, receive_all
from tests.support.sqs import queue_counts
from vip_worker.ops import dlq, redrive
from vip_worker.ops.journal import Journal
from vip_worker.sqs.boto import SqsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def dead(sqs, make_queue):
    urls = make_queue("select")
    ids = {dead_letter(sqs, urls["dlq"], uuid.uuid4().hex[:24], error=f"error {n % 3}"): n
           for n in range(12)}  # more than one receive batch
    return urls, ids


def picked_by_error(wanted: str):
    return lambda message: message["MessageAttributes"]["vip_error"]["StringValue"] == wanted


def test_a_redrive_moves_only_what_select_picks(sqs, dead, tmp_path):
    urls, ids = dead
    result = redrive.RedriveResult()
    with Journal(str(tmp_path / "select.journal")) as journal:
        journal.begin(12)
        why = redrive.move_messages(SqsClient(sqs), urls["dlq"], lambda m: urls["url"],
                                    journal, result, 12, select=picked_by_error("error 1"))
    assert why == redrive.DONE_EMPTY
    assert (result.moved, result.failed, result.came_back) == (4, 0, 0)
    moved = receive_all(sqs, urls["url"])
    assert sorted(m["MessageAttributes"]["vip_redriven_from"]["StringValue"]
                  for m in moved) == sorted(i for i, n in ids.items() if n % 3 == 1)
    assert queue_counts(sqs, urls["dlq"]) == (8, 0)  # the others released, visible at once


def test_discard_deletes_only_the_picked_messages_up_to_the_limit(sqs, dead):
    urls, ids = dead
    client = SqsClient(sqs)
    deleted, problems = dlq.discard(client, urls["dlq"], picked_by_error("error 2"), limit=3)
    assert (deleted, problems) == (3, [])
    left = receive_all(sqs, urls["dlq"])
    assert len(left) == 9
    errors = [m["MessageAttributes"]["vip_error"]["StringValue"] for m in left]
    assert errors.count("error 2") == 1 and json.loads(left[0]["Body"])["jobId"]
