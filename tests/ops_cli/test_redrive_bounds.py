"""When the manual redrive stops, on the in-memory FakeSqs: the budget, the copies that come
back while a daemon keeps failing, ``stop()``, and the run that continues a stopped one."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeMessage, FakeSqs, make_queue_settings
from vip_worker.errors import PermanentError
from vip_worker.inflight import InFlight
from vip_worker.ops import redrive
from vip_worker.ops.journal import DELETED, Journal, read_journal
from vip_worker.outcomes import dead_letter_attributes


class FailingDaemon(FakeSqs):
    """A FakeSqs whose ``work`` queue has a daemon that dead-letters every message at once,
    as soon as the redrive's SendMessageBatch returns: the worst case of the issue.

    ``how`` is the copy the DLQ gets: ``consumer`` (the daemon's copy: a new MessageId and
    outcomes.dead_letter_attributes), ``redriven_from`` (that copy without
    vip_source_message_id), ``same_id`` (SQS's RedrivePolicy: the MessageId kept),
    ``bare`` (a new id and no attribute at all: unrecognisable). The DLQ hands out its
    newest messages first (a standard queue keeps no order): copies come back first.
    """

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.dlq = self.create_queue("work-dlq")
        self.work = self.create_queue("work")
        self.handled: list[str] = []

    def send_batch(self, queue_url, entries):
        sent, failed = super().send_batch(queue_url, entries)
        if queue_url == self.work:
            for raw in self.take(self.work, 10, 30):
                self.fail_again(raw)
        return sent, failed

    def messages(self, url: str) -> list[FakeMessage]:
        found = super().messages(url)
        return found[::-1] if url == self.dlq else found

    def fail_again(self, raw: dict) -> None:
        self.handled.append(json.loads(raw["Body"])["jobId"])
        self.delete_batch(self.work, [("0", raw["ReceiptHandle"])])
        item = InFlight.from_sqs(make_queue_settings(self.work), raw, 0.0)
        attributes = dead_letter_attributes(item, PermanentError("still broken"))
        if self.how == "redriven_from":
            attributes.pop("vip_source_message_id")
        if self.how == "same_id":
            now = self.clock.now()
            self.queue(self.dlq).messages.append(FakeMessage(
                raw["MessageId"], raw["Body"], raw.get("MessageAttributes", {}), None, now, now))
            return
        self.put(self.dlq, raw["Body"], None if self.how == "bare" else attributes)

    def dead_letters(self, count: int) -> list[str]:
        return [self.put(self.dlq, json.dumps({"jobId": f"job{n}", "type": "fail"}))
                for n in range(count)]

    def moved_jobs(self) -> list[str]:
        return sorted(self.handled)


def run(fake: FailingDaemon, path, stop=lambda: False, batch_max=2):
    result = redrive.RedriveResult()
    with Journal(str(path)) as journal:
        limit = redrive.plan(fake, fake.dlq, journal)
        why = redrive.move_messages(fake, fake.dlq, lambda m: fake.work, journal, result,
                                    limit, stop=stop, batch_max=batch_max)
        if why != redrive.STOPPED:
            journal.finish()
    return why, result


@pytest.mark.parametrize("how", ["consumer", "redriven_from", "same_id"])
def test_a_copy_that_comes_back_is_never_moved_again(tmp_path, how):
    fake = FailingDaemon(how)
    fake.dead_letters(5)

    why, result = run(fake, tmp_path / "j.journal")

    assert why == redrive.DONE_BUDGET
    assert fake.moved_jobs() == [f"job{n}" for n in range(5)]  # each handled once more
    assert (result.moved, result.failed) == (5, 0)
    assert result.came_back >= 1  # batches of 2: copies came back before the last original
    assert len(fake.visible(fake.dlq)) == 5  # the copies, visible again at the end
    assert not (tmp_path / "j.journal").exists()


def test_an_unrecognisable_copy_still_cannot_make_the_redrive_go_round(tmp_path):
    fake = FailingDaemon("bare")
    fake.dead_letters(5)

    why, result = run(fake, tmp_path / "j.journal", batch_max=10)
    assert why == redrive.DONE_BUDGET and result.moved == 5
    assert len(fake.calls_to("send_batch")) == 1
    assert len(fake.messages(fake.dlq)) == 5


def test_the_budget_leaves_later_dead_letters_for_the_next_redrive(tmp_path):
    fake = FailingDaemon("consumer")
    fake.dead_letters(3)

    def receive_messages(*args):
        fake.dead_letters(1)  # another job dies while the redrive runs: not in its budget
        return FakeSqs.receive_messages(fake, *args)

    fake.receive_messages = receive_messages
    why, result = run(fake, tmp_path / "j.journal", batch_max=1)
    assert why == redrive.DONE_BUDGET and result.moved == 3
    assert len(fake.moved_jobs()) == 3


def test_an_empty_receive_ends_the_run_before_the_budget(tmp_path):
    fake = FailingDaemon("consumer")
    ids = fake.dead_letters(3)
    with Journal(str(tmp_path / "j.journal")) as journal:
        journal.begin(5)  # the count was approximate (real SQS): 2 too many
        result = redrive.RedriveResult()
        why = redrive.move_messages(fake, fake.dlq, lambda m: fake.work, journal, result, 5)
    assert why == redrive.DONE_EMPTY and result.moved == 3 and result.came_back == 3
    assert {m.message_id for m in fake.messages(fake.dlq)}.isdisjoint(ids)


def test_a_stopped_redrive_is_continued_and_moves_nothing_twice(tmp_path):
    fake = FailingDaemon("consumer")
    fake.dead_letters(5)
    path = tmp_path / "j.journal"

    why, first = run(fake, path, stop=lambda: len(fake.handled) >= 2)
    assert why == redrive.STOPPED and first.moved == 2
    run_header, entries = read_journal(str(path))
    assert run_header["budget"] == 5  # kept, with what was moved, for the next run
    assert sorted(e["state"] for e in entries.values()) == [DELETED, DELETED]
    assert len(fake.visible(fake.dlq)) == 5  # 3 originals, 2 copies that came back

    why, second = run(fake, path)
    assert why == redrive.DONE_BUDGET
    assert (second.moved, second.skipped) == (3, 0)
    assert fake.moved_jobs() == [f"job{n}" for n in range(5)]
    assert len(fake.messages(fake.dlq)) == 5
    assert not path.exists()


def test_a_stop_after_a_receive_releases_the_batch_unmoved(tmp_path):
    fake = FailingDaemon("consumer")
    fake.dead_letters(3)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 2  # false before the first receive, true just after it

    why, result = run(fake, tmp_path / "j.journal", stop=stop)
    assert why == redrive.STOPPED and result.handled == 0 and not fake.handled
    assert len(fake.visible(fake.dlq)) == 3
