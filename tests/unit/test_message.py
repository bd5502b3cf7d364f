"""parse_envelope: the seed's format parses; anything else names the field at fault."""

from __future__ import annotations

import json

import pytest

from vip_worker.errors import MalformedMessage, PermanentError
from vip_worker.message import Envelope, parse_envelope

SEED = {
    "jobId": "65a4f1c2e4b0a1b2c3d4e5f6",
    "userId": "user-42",
    "type": "articles",
    "timestamp": "2025-01-15T10:30:00Z",
    "payload": {"mode": "topic", "topic": "solar", "wordCount": 1500, "tone": "formal"},
}


def body(**changes):
    doc = {**SEED, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


def reason(text: str) -> str:
    with pytest.raises(MalformedMessage) as raised:
        parse_envelope(text)
    return str(raised.value)


def test_the_seeds_exact_format_parses():
    env = parse_envelope(json.dumps(SEED))
    assert env == Envelope(job_id=SEED["jobId"], user_id="user-42", type="articles",
                           timestamp="2025-01-15T10:30:00Z", payload=SEED["payload"])
    assert json.loads(env.to_body()) == SEED


def test_extra_fields_are_kept_and_written_back():
    env = parse_envelope(body(priority=5, traceId="abc"))
    assert env.extra == {"priority": 5, "traceId": "abc"}
    assert json.loads(env.to_body())["priority"] == 5


def test_malformed_is_permanent():
    assert issubclass(MalformedMessage, PermanentError)


@pytest.mark.parametrize("text", ["", "{", "not json", '{"jobId": }'])
def test_invalid_json(text):
    assert "not valid JSON" in reason(text)


def test_deeply_nested_json_is_malformed_not_a_crash():
    assert "not valid JSON" in reason("[" * 100000 + "]" * 100000)


@pytest.mark.parametrize(("text", "kind"), [("[]", "list"), ('"x"', "str"), ("3", "int"),
                                            ("null", "NoneType")])
def test_a_body_that_is_not_an_object(text, kind):
    assert reason(text) == f"body must be a JSON object, got {kind}"


@pytest.mark.parametrize("field", ["jobId", "userId", "type", "timestamp", "payload"])
def test_each_missing_field_is_named(field):
    assert reason(body(**{field: ...})) == f"missing field {field!r}"


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("jobId", 123, "int"),
    ("userId", None, "NoneType"),
    ("type", ["articles"], "list"),
    ("timestamp", 1736937000, "int"),
    ("payload", "topic=solar", "str"),
    ("payload", [1, 2], "list"),
])
def test_wrong_types_are_named(field, value, kind):
    assert f"field {field!r} must be" in reason(body(**{field: value}))
    assert f"got {kind}" in reason(body(**{field: value}))


@pytest.mark.parametrize("field", ["jobId", "userId", "type"])
def test_empty_or_huge_ids_are_refused(field):
    assert f"field {field!r}" in reason(body(**{field: ""}))
    assert "1..256" in reason(body(**{field: "x" * 257}))


@pytest.mark.parametrize("stamp", ["yesterday", "2025-13-01T00:00:00Z", "15/01/2025 10:30"])
def test_a_bad_timestamp_is_named(stamp):
    assert "field 'timestamp'" in reason(body(timestamp=stamp))


def test_a_timestamp_with_offset_or_fraction_parses():
    assert parse_envelope(body(timestamp="2025-01-15T10:30:00.123+02:00")).timestamp.endswith(
        "+02:00")
