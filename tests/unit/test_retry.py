"""retry_delay (exponential, capped, jittered) and dead-letter attributes within SQS's limit."""

from __future__ import annotations

import pytest

from tests.fakes import make_queue_settings
from vip_worker import outcomes as retry
from vip_worker.errors import PermanentError
from vip_worker.inflight import InFlight
from vip_worker.sqs.limits import MAX_ATTRIBUTES, MAX_MESSAGE_BYTES


def zero():
    return 0.0


def one():
    return 1.0


@pytest.mark.parametrize(("count", "ceiling"), [(0, 10), (1, 10), (2, 20), (3, 40), (4, 80),
                                                (6, 320), (7, 640), (8, 900), (50, 900)])
def test_delay_doubles_per_receive_up_to_the_cap(count, ceiling):
    assert retry.retry_delay(count, 10, 900, one) == ceiling
    assert retry.retry_delay(count, 10, 900, zero) == ceiling / 2


def test_jitter_stays_between_half_and_all_of_the_ceiling():
    for r in (0.0, 0.25, 0.5, 0.999):
        delay = retry.retry_delay(3, 10, 900, lambda r=r: r)
        assert 20 <= delay <= 40
        assert delay == pytest.approx(20 + r * 20)


def test_huge_receive_counts_do_not_overflow():
    assert retry.retry_delay(10**9, 10, 900, one) == 900
    assert retry.retry_delay(10**9, 10, 1e300, one) == 10 * 2**retry.MAX_EXPONENT


def test_zero_base_means_no_delay():
    assert retry.retry_delay(5, 0, 900, one) == 0


def item(attributes=None, receive_count=3):
    queue = make_queue_settings("https://sqs.example/q/articles", name="articles")
    return InFlight(queue=queue, message_id="mid-1", receipt="rh", body="{}",
                    receive_count=receive_count, received_at=0.0, visible_until=60.0,
                    attributes=attributes or {})


def string(value):
    return {"DataType": "String", "StringValue": value}


def test_dead_letter_attributes_carry_the_reason():
    attrs = retry.dead_letter_attributes(item(), PermanentError("wordCount out of range"))
    assert attrs[retry.ERROR_CLASS] == string("PermanentError")
    assert attrs[retry.ERROR_TEXT] == string("wordCount out of range")
    assert attrs[retry.ATTEMPTS] == {"DataType": "Number", "StringValue": "3"}
    assert attrs[retry.SOURCE_QUEUE] == string("articles")
    assert attrs[retry.SOURCE_MESSAGE_ID] == string("mid-1")


def test_originals_are_kept_when_there_is_room_and_cleaned():
    original = {"trace": {**string("t-1"), "StringListValues": [], "BinaryListValues": []},
                "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}
    attrs = retry.dead_letter_attributes(item(original), ValueError("boom"))
    assert attrs["trace"] == string("t-1")
    assert attrs["blob"] == {"DataType": "Binary", "BinaryValue": b"\x00\x01"}
    assert len(attrs) == 7


def test_never_more_than_ten_attributes_and_ours_win():
    original = {f"a{n:02d}": string(str(n)) for n in range(10)}
    original[retry.ERROR_CLASS] = string("forged")
    attrs = retry.dead_letter_attributes(item(original), ValueError("boom"))
    assert len(attrs) == MAX_ATTRIBUTES
    assert attrs[retry.ERROR_CLASS] == string("ValueError")
    assert [k for k in attrs if k.startswith("a")] == ["a00", "a01", "a02", "a03", "a04"]


def test_an_empty_or_huge_reason_still_fits():
    assert retry.dead_letter_attributes(item(), ValueError())[retry.ERROR_TEXT] == string(
        "(no message)")
    long = retry.dead_letter_attributes(item(), ValueError("x" * 5000))[retry.ERROR_TEXT]
    assert len(long["StringValue"]) == retry.REASON_MAX
    assert retry.reason_of(ValueError("")) == "ValueError: (no message)"


def test_a_body_near_the_size_limit_keeps_what_fits_source_id_first():
    original = {"trace": string("t-1")}
    near = item(original)
    near.body = "x" * (MAX_MESSAGE_BYTES - 100)
    attrs = retry.dead_letter_attributes(near, ValueError("y" * 900))
    assert "trace" not in attrs
    assert attrs[retry.SOURCE_MESSAGE_ID] == string("mid-1")
    assert len(near.body) + retry.attributes_size(attrs) <= MAX_MESSAGE_BYTES


def test_a_long_reason_is_shortened_before_anything_is_dropped():
    near = item()
    near.body = "x" * (MAX_MESSAGE_BYTES - 400)
    attrs = retry.dead_letter_attributes(near, ValueError("y" * 900))
    assert set(attrs) == {retry.SOURCE_MESSAGE_ID, retry.ERROR_CLASS, retry.ATTEMPTS,
                          retry.SOURCE_QUEUE, retry.ERROR_TEXT}
    assert attrs[retry.ERROR_TEXT]["StringValue"].endswith("...")
    assert len(near.body) + retry.attributes_size(attrs) <= MAX_MESSAGE_BYTES


def test_the_budget_is_the_dlqs_own_limit_when_it_is_smaller():
    small = item({"trace": string("t-1")})
    small.body = "x" * 900
    attrs = retry.dead_letter_attributes(small, ValueError("y" * 900), max_bytes=1024)
    assert "trace" not in attrs and attrs[retry.SOURCE_MESSAGE_ID] == string("mid-1")
    assert len(small.body) + retry.attributes_size(attrs) <= 1024
    # the same message under SQS's own limit keeps everything
    assert "trace" in retry.dead_letter_attributes(small, ValueError("y" * 900))
