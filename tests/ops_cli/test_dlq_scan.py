"""The dashboard's selective DLQ actions on the in-memory FakeSqs, where a security review
found them broken: a selected id not found made the scan go round a large DLQ forever (held
messages reappear after their visibility timeout); a body nested too deep broke the
summary and left a received batch invisible; an interrupted dashboard redrive was finished
by ``vip-worker dlq redrive`` without its selection (it moved everything)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.fakes import FakeSqs
from vip_worker.ops import dlq, redrive
from vip_worker.ops.journal import Journal
from vip_worker.ops.redrive_command import manual_move
from vip_worker.outcomes import ERROR_TEXT

DEEP = "[" * 100_000 + "]" * 100_000
RECEIVES_MAX = 200  # far more than any bounded scan of these queues needs


class RoundAndRound(FakeSqs):
    """Every receive takes longer than the visibility timeout: what a scan held is
    visible again at the next receive (a DLQ bigger than a timeout's worth of receives).
    Past ``RECEIVES_MAX`` receives it fails the test instead of letting it hang."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.dlq = self.create_queue("work-dlq")
        self.work = self.create_queue("work")
        self.ids = [self.put(self.dlq, json.dumps({"jobId": f"job{n}", "type": "articles"}))
                    for n in range(count)]

    def receive_messages(self, *args):
        if len(self.calls_to("receive_messages")) >= RECEIVES_MAX:
            raise AssertionError("the scan never ends")
        self.clock.advance(61)  # past the visibility the scans use (30 s, 60 s)
        return super().receive_messages(*args)


def test_discard_of_an_id_not_in_the_dlq_ends():
    fake = RoundAndRound(25)
    deleted, problems = dlq.discard(fake, fake.dlq, lambda m: m["MessageId"] == "gone",
                                    limit=1, scan_max=25)
    assert (deleted, problems) == (0, [])
    assert len(fake.calls_to("receive_messages")) <= 4  # 25 messages, 10 a receive
    assert len(fake.visible(fake.dlq)) == 25


def test_discard_stops_once_every_selected_id_is_found():
    fake = RoundAndRound(25)
    wanted = {fake.ids[0], fake.ids[3]}
    deleted, _ = dlq.discard(fake, fake.dlq, lambda m: m["MessageId"] in wanted,
                             limit=2, scan_max=25)
    assert deleted == 2 and len(fake.calls_to("receive_messages")) == 1
    assert len(fake.messages(fake.dlq)) == 23 and len(fake.visible(fake.dlq)) == 23


def test_a_selective_redrive_of_an_id_not_in_the_dlq_ends(tmp_path):
    fake = RoundAndRound(25)
    result = redrive.RedriveResult()
    with Journal(str(tmp_path / "j.journal")) as journal:
        journal.begin(1, {"ids": ["gone"]})
        why = redrive.move_messages(fake, fake.dlq, lambda m: fake.work, journal, result, 1,
                                    select=dlq.selector(journal.run["selection"]),
                                    scan_max=25)
    assert why == redrive.DONE_SCANNED and result.handled == 0
    assert len(fake.visible(fake.dlq)) == 25 and fake.messages(fake.work) == []


def test_a_body_nested_too_deep_is_summarised_as_not_json():
    fake = FakeSqs()
    url = fake.create_queue("work-dlq")
    fake.put(url, DEEP)
    [message] = fake.receive_messages(url, 1, 0, 30, [])
    found = dlq.summary(message)
    assert found["body_is_json"] is False and found["body_chars"] == len(DEEP)
    assert dlq.selector({"reason": "x", "type": ""})(message) is False
    assert dlq.selector({"reason": "", "type": ""})(message) is True


def test_a_select_that_raises_leaves_the_batch_visible(tmp_path):
    fake = FakeSqs()  # its clock stands still: only a release makes a message visible
    fake.dlq, fake.work = fake.create_queue("work-dlq"), fake.create_queue("work")
    for n in range(3):
        fake.put(fake.dlq, DEEP if n == 1 else json.dumps({"jobId": f"job{n}"}))

    def explode(message):
        raise RecursionError("maximum recursion depth exceeded")

    with Journal(str(tmp_path / "j.journal")) as journal:
        journal.begin(3)
        with pytest.raises(RecursionError):
            redrive.move_messages(fake, fake.dlq, lambda m: fake.work, journal,
                                  redrive.RedriveResult(), 3, select=explode)
    assert len(fake.visible(fake.dlq)) == 3
    with pytest.raises(RecursionError):
        dlq.discard(fake, fake.dlq, explode, limit=3)
    assert len(fake.visible(fake.dlq)) == 3 and fake.messages(fake.work) == []


def test_the_cli_continues_a_dashboard_redrive_with_its_selection(tmp_path, capsys):
    fake = FakeSqs()
    dlq_url, work = fake.create_queue("work-dlq"), fake.create_queue("work")
    ids = [fake.put(dlq_url, json.dumps({"jobId": f"job{n}"})) for n in range(6)]
    path = str(tmp_path / "work-dlq.journal")
    with Journal(path) as journal:  # the dashboard's run, interrupted before it moved any
        journal.begin(2, {"ids": [ids[1], ids[4]]})
    with Journal(path) as journal:
        code = manual_move(SimpleNamespace(max=None), fake, journal, dlq_url,
                           lambda m: work)
    out = capsys.readouterr().out
    assert code == 0 and "the 2 selected message(s): only those move" in out
    assert sorted(m.message_id for m in fake.messages(dlq_url)) == sorted(
        set(ids) - {ids[1], ids[4]})
    assert len(fake.messages(work)) == 2
    with Journal(path) as journal:
        assert journal.run is None  # finished


def test_the_cli_continues_a_dashboard_redrive_of_a_filter(tmp_path, capsys):
    fake = FakeSqs()
    dlq_url, work = fake.create_queue("work-dlq"), fake.create_queue("work")
    for n in range(6):
        why = "timeout after 900 s" if n % 2 else "bad request"
        fake.put(dlq_url, json.dumps({"jobId": f"job{n}"}),
                 {ERROR_TEXT: {"DataType": "String", "StringValue": why}})
    path = str(tmp_path / "work-dlq.journal")
    with Journal(path) as journal:
        journal.begin(6, {"reason": "timeout"})
    with Journal(path) as journal:
        code = manual_move(SimpleNamespace(max=None), fake, journal, dlq_url,
                           lambda m: work)
    assert code == 0 and "matching reason 'timeout'" in capsys.readouterr().out
    assert len(fake.messages(work)) == 3 and len(fake.messages(dlq_url)) == 3
    assert all("bad request" in json.dumps(m.attributes) for m in fake.messages(dlq_url))
