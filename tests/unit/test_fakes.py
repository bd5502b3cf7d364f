"""The fake SQS keeps the SQS rules the other unit tests rely on."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import AsyncFakeSqs, FakeClock, FakeSqs
from vip_worker.sqs.api import ClientError


@pytest.fixture
def fake():
    return FakeSqs(FakeClock())


def test_a_received_message_is_invisible_until_its_deadline(fake):
    url = fake.create_queue("q")
    fake.send(url, "hello")
    first = fake.receive(url, 10, 20, 30)
    assert [m["Body"] for m in first] == ["hello"]
    assert fake.receive(url, 10, 20, 30) == []
    fake.clock.advance(30)
    second = fake.receive(url, 10, 20, 30)
    assert second[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second[0]["ReceiptHandle"] != first[0]["ReceiptHandle"]


def test_only_the_latest_receipt_handle_is_valid(fake):
    url = fake.create_queue("q")
    fake.send(url, "x")
    old = fake.receive(url, 1, 0, 5)[0]["ReceiptHandle"]
    fake.clock.advance(5)
    new = fake.receive(url, 1, 0, 5)[0]["ReceiptHandle"]
    failed = fake.delete_batch(url, [("a", old), ("b", new)])
    assert [(f.id, f.code) for f in failed] == [("a", "ReceiptHandleIsInvalid")]
    assert fake.messages(url) == []


def test_visibility_changes_follow_sqs_rules(fake):
    url = fake.create_queue("q")
    fake.send(url, "x")
    receipt = fake.receive(url, 1, 0, 60)[0]["ReceiptHandle"]
    assert fake.change_visibility_batch(url, [("0", receipt, 120)]) == []
    assert fake.messages(url)[0].visible_at == fake.clock.now() + 120
    too_long = fake.change_visibility_batch(url, [("0", receipt, 43201)])
    assert too_long[0].code == "InvalidParameterValue"
    fake.change_visibility_batch(url, [("0", receipt, 0)])
    assert fake.change_visibility_batch(url, [("0", receipt, 5)])[0].code == "MessageNotInflight"


def test_batches_break_sqs_limits_loudly(fake):
    url = fake.create_queue("q")
    with pytest.raises(ClientError, match="TooManyEntries"):
        fake.delete_batch(url, [(str(n), "r") for n in range(11)])
    with pytest.raises(ClientError, match="NotDistinct"):
        fake.delete_batch(url, [("1", "r"), ("1", "s")])
    with pytest.raises(ClientError, match="exceeds the allowed maximum"):
        fake.send(url, "x", {f"a{n}": {"DataType": "String", "StringValue": "v"}
                             for n in range(11)})


def test_fifo_holds_back_a_group_while_one_of_it_is_in_flight(fake):
    url = fake.create_queue("q.fifo")
    for n in range(2):
        fake.send(url, f"g{n}", group_id="g", dedup_id=f"g{n}")
    fake.send(url, "h0", group_id="h", dedup_id="h0")
    first = fake.receive(url, 1, 0, 30)
    assert [m["Body"] for m in first] == ["g0"]
    assert first[0]["Attributes"]["MessageGroupId"] == "g"
    assert [m["Body"] for m in fake.receive(url, 10, 0, 30)] == ["h0"]
    fake.clock.advance(30)
    assert [m["Body"] for m in fake.receive(url, 10, 0, 30)] == ["g0", "g1", "h0"]


def test_injected_failures(fake):
    url = fake.create_queue("q")
    fake.send(url, "x")
    fake.send(url, "y")
    got = fake.receive(url, 10, 0, 30)
    fake.fail_entries([got[1]["MessageId"]], "InternalError")
    failed = fake.delete_batch(url, [("0", got[0]["ReceiptHandle"]),
                                     ("1", got[1]["ReceiptHandle"])])
    assert [(f.id, f.code) for f in failed] == [("1", "InternalError")]
    fake.fail_next("receive", "ServiceUnavailable")
    with pytest.raises(ClientError) as raised:
        fake.receive(url, 1, 0, 30)
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert fake.receive(url, 1, 0, 30) == []
    assert [name for name, _ in fake.calls].count("receive") == 3


def test_an_empty_async_receive_parks_until_a_send(fake):
    url = fake.create_queue("q")
    sqs = AsyncFakeSqs(fake)

    async def main():
        poll = asyncio.create_task(sqs.receive(url, 10, 20, 30))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not poll.done()
        await sqs.send(url, "late")
        return await asyncio.wait_for(poll, 5)

    assert [m["Body"] for m in asyncio.run(main())] == ["late"]
    assert len(fake.calls_to("receive")) == 1


def test_an_async_receive_that_does_not_park_returns_at_once(fake):
    url = fake.create_queue("q")
    assert asyncio.run(AsyncFakeSqs(fake, park=False).receive(url, 10, 20, 30)) == []
