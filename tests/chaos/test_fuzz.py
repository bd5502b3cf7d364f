"""Malformed input: hypothesis against the envelope parser, then against the daemon.

The parser's contract: any text body gives an ``Envelope`` or raises
``MalformedMessage``, never anything else, and a valid envelope round-trips.

The daemon's: a batch of generated bodies and attributes (invalid JSON, wrong
types, missing and extra fields, deep nesting, odd unicode, huge strings up to
1 MiB) sent to a queue it serves ends, message by message, handled (the valid
ones) or in the DLQ with a reason; no poller dies, the daemon does not stall,
and its memory stays bounded. The SQS fault proxy enforces real SQS's size rule
(body + attributes <= 1 MiB, in bytes), which moto does not.
"""

from __future__ import annotations

import json
import string
import time
from pathlib import Path

import boto3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.chaos.sqs_proxy import SQS_MAX_BYTES, SqsFaultProxy, message_size
from tests.support.daemon import Daemon, write_config
from vip_worker.errors import MalformedMessage
from vip_worker.message import Envelope, parse_envelope
from vip_worker.outcomes import SOURCE_MESSAGE_ID

MIB = 1024 * 1024
REQUIRED = ("jobId", "userId", "type", "timestamp", "payload")

# Characters SQS accepts in a body: #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF.
sqs_chars = st.characters(min_codepoint=0x20, exclude_categories=("Cs",),
                          exclude_characters="\ufffe\uffff") | st.sampled_from("\t\n\r")
# Unusual but legal in SQS (bidi override, zero-width, BOM, combining, astral, escapes).
odd_chars = st.sampled_from(["\u202e", "\u200b", "\ufeff", "e\u0301", "\U0001f4a9", "\\",
                             '"', "\u2028", "\U0010fffd", "\x7f", "\\u0000", "\\ud800"])
# What SQS never delivers, for the parser alone: NUL, lone surrogates, controls.
illegal_chars = st.sampled_from(["\x00", "\ud800", "\udfff", "\x01", "\ufffe"])
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(sqs_chars, max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(sqs_chars, max_size=10), inner,
                                             max_size=4), max_leaves=20)
ids = st.text(sqs_chars, min_size=1, max_size=40)
timestamps = st.sampled_from(["2025-01-15T10:30:00Z", "2025-01-15T10:30:00.123+02:00",
                              "2025-01-15", "not a time", "", "2025-13-45T99:00:00Z"])


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"a": value}
    return value


@st.composite
def envelopes(draw, types=st.sampled_from(["fuzz", "articles", "nope", ""])) -> dict:
    """Envelope-shaped objects: sometimes valid, often a field missing, extra or mistyped."""
    doc = {"jobId": draw(ids), "userId": draw(ids), "type": draw(types),
           "timestamp": draw(timestamps), "payload": draw(st.dictionaries(
               st.text(sqs_chars, max_size=10), json_values, max_size=5))}
    for key in draw(st.lists(st.sampled_from(REQUIRED), max_size=2, unique=True)):
        if draw(st.booleans()):
            del doc[key]
        else:
            doc[key] = draw(json_values)
    doc.update(draw(st.dictionaries(st.text(sqs_chars, max_size=12), json_values, max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        doc["payload"] = {"deep": nested(draw(st.integers(10, 3000)))}
    return doc


def json_text(doc: object, ascii_only: bool) -> str:
    try:
        return json.dumps(doc, ensure_ascii=ascii_only)
    except (RecursionError, ValueError):
        return "[" * 5000


bodies = st.one_of(
    st.text(sqs_chars, max_size=200),
    st.lists(odd_chars | sqs_chars, max_size=50).map("".join),
    json_values.map(json.dumps),
    st.builds(json_text, envelopes(), st.booleans()),
    st.integers(1, 20000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 20000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.tuples(st.integers(10_000, MIB - 2048), st.sampled_from("x\u00e9\u4e2d")).map(
        lambda t: json.dumps({"jobId": "j", "userId": "u", "type": "fuzz",
                              "timestamp": "2025-01-15T10:30:00Z",
                              "payload": {"blob": t[1] * (t[0] // len(t[1].encode()))}},
                             ensure_ascii=False)),
)


# -- the parser ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies | st.text() | st.lists(illegal_chars | odd_chars | sqs_chars, max_size=50).map(
    "".join))
@example("[" * 100_000)
@example('{"payload":' * 100_000)
@example('{"jobId":"1","userId":"u","type":"t","timestamp":"2025-01-15","payload":{}' + " " * 5)
@example('{"jobId":"j","userId":"u","type":"t","timestamp":"2025-01-15","payload":{"n":'
         + "9" * 5000 + "}}")  # past Python's int digit limit: a ValueError inside json
@example("\ud800")
@example('"\\ud800"')
@example(json.dumps({k: "\ud800" for k in REQUIRED[:4]} | {"payload": {}}))
def test_any_body_parses_or_is_malformed(body):
    try:
        envelope = parse_envelope(body)
    except MalformedMessage as exc:
        assert type(exc) is MalformedMessage and str(exc)
        return
    assert isinstance(envelope, Envelope)
    assert all(isinstance(v, str) and v for v in (envelope.job_id, envelope.user_id,
                                                    envelope.type))
    assert isinstance(envelope.payload, dict)


@settings(max_examples=300, deadline=None)
@given(st.builds(Envelope, job_id=st.text(min_size=1, max_size=256),
                 user_id=st.text(min_size=1, max_size=256), type=st.text(min_size=1,
                                                                          max_size=256),
                 timestamp=st.datetimes().map(lambda d: d.isoformat()),
                 payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
                 extra=st.dictionaries(st.text(max_size=10).filter(
                     lambda k: k not in REQUIRED), json_values, max_size=3)))
def test_valid_envelopes_round_trip(envelope):
    assert parse_envelope(envelope.to_body()) == envelope


@pytest.mark.parametrize("size", [MIB - 4096, MIB - 200, MIB])
def test_a_body_near_one_mib_parses_quickly(size):
    head = json.dumps({"jobId": "j", "userId": "u", "type": "t",
                       "timestamp": "2025-01-15T10:30:00Z", "payload": {"blob": ""}})
    body = head.replace('"blob": ""', '"blob": "' + "\u00e9" * (size - len(head)) + '"')
    started = time.monotonic()
    assert len(parse_envelope(body).payload["blob"]) == size - len(head)
    assert time.monotonic() - started < 1.0


def list_depth(value: object) -> int:
    """How deep ``[[[...]]]`` nests (iteratively: the value may be deeper than the stack)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


@pytest.mark.parametrize(("depth", "outcome"), [
    (100, "parsed"), (900, "either"), (5_000, "either"), (200_000, "malformed")])
def test_deep_nesting_inside_the_payload_is_malformed_or_parsed_never_a_crash(depth, outcome):
    # Shallow nesting parses whole; nesting past the parser's recursion limit is a
    # MalformedMessage (a RecursionError escaping would kill the poller's task).
    body = json.dumps({"jobId": "j", "userId": "u", "type": "t",
                       "timestamp": "2025-01-15T10:30:00Z", "payload": {}})
    body = body.replace('"payload": {}', '"payload": {"d": ' + "[" * depth + "]" * depth
                        + "}")
    try:
        envelope = parse_envelope(body)
    except MalformedMessage as exc:
        assert outcome != "parsed", f"depth {depth} must parse: {exc}"
        assert "not valid JSON" in str(exc)
        return
    assert outcome != "malformed", f"depth {depth} parsed"
    assert list_depth(envelope.payload["d"]) == depth


# -- the daemon --------------------------------------------------------------------------------

PLUGIN = '''"""Fuzz target: records each handled message id."""
from vip_worker import hookimpl


def handle(message, ctx):
    with open(ctx.plugin_settings["ledger"], "a") as fh:
        fh.write(ctx.message_id + "\\n")


@hookimpl
def vip_worker_register_handlers(register):
    register("fuzz", handle)


@hookimpl
def vip_worker_register_settings(declare):
    declare("ledger", "", help="file the handler appends message ids to")
'''

attribute_names = st.text(string.ascii_letters + string.digits + "_-", min_size=1,
                          max_size=40) | st.sampled_from(["vip_error", "vip_attempts"])
attribute_values = st.one_of(
    st.builds(lambda v: {"DataType": "String", "StringValue": v},
              st.text(sqs_chars, min_size=1, max_size=300)),
    st.builds(lambda v: {"DataType": "Number", "StringValue": str(v)}, st.integers()),
    st.builds(lambda v: {"DataType": "Binary", "BinaryValue": v}, st.binary(min_size=1,
                                                                            max_size=100)),
    st.builds(lambda v: {"DataType": "String.custom", "StringValue": v},
              st.text(sqs_chars, min_size=1, max_size=30)))
messages = st.tuples(bodies.filter(lambda b: b != ""),
                     st.dictionaries(attribute_names, attribute_values, max_size=10))
BATCH = 150


def generated_messages() -> list[tuple[str, dict]]:
    found: list[tuple[str, dict]] = []

    @settings(max_examples=BATCH, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def collect(message):
        found.append(message)

    collect()
    return found


def expected(body: str) -> str:
    try:
        envelope = parse_envelope(body)
    except MalformedMessage:
        return "dlq"
    return "handled" if envelope.type == "fuzz" else "dlq"


def poller_rss_kb(daemon: Daemon) -> dict[int, int]:
    result = {}
    for pid in daemon.children():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    result[pid] = int(line.split()[1])
        except OSError:
            pass
    return result


@pytest.fixture
def fuzz_daemon(tmp_path, sqs_endpoint):
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")
    name = f"fuzz-{time.time_ns()}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    # maxReceiveCount 4: SQS's own redrive is the backstop for a message the daemon
    # cannot dead-letter itself (see the oversized case below).
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": "10", "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": arn, "maxReceiveCount": "4"})})["QueueUrl"]
    plugins = tmp_path / "plugins"
    (plugins / "fuzzjobs").mkdir(parents=True)
    (plugins / "fuzzjobs" / "__init__.py").write_text(PLUGIN)
    ledger = tmp_path / "handled.txt"
    ledger.touch()
    proxy = SqsFaultProxy(sqs_endpoint, enforce_size_limit=True).start()
    path = write_config(
        tmp_path / "vip-worker.toml",
        # track_jobs off: the fuzzed jobIds ("j", "0", ...) repeat and name no job of the
        # store; tracked, every message of a jobId after the first would be answered
        # job.already_completed without its handler, and the test counts handler runs.
        {"fuzz": {"url": url, "wait_time_s": 1, "visibility_timeout_s": 10, "max_attempts": 3,
                  "retry_backoff_base_s": 0.2, "retry_backoff_max_s": 0.5,
                  "track_jobs": False}},
        processes=2, concurrency=8, log_level="INFO", metrics_interval_s=0,
        plugin_dirs=[str(plugins)], state_dir=str(tmp_path / "state"),
        plugins={"fuzzjobs": {"ledger": str(ledger)}})
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d", path, proxy.url)
    try:
        daemon.wait_for("poller.ready", count=2, timeout=60)
        sender = boto3.client("sqs", endpoint_url=proxy.url, region_name="us-east-1")
        yield daemon, sqs, sender, {"url": url, "dlq": dlq}, ledger, proxy
    finally:
        daemon.kill()
        proxy.stop()


def read_dlq(sqs, url: str) -> dict[str, dict]:
    """DLQ copies by the original MessageId (the daemon's attribute, or SQS's redrive,
    which keeps the MessageId)."""
    found: dict[str, dict] = {}
    empty = 0
    while empty < 2:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                  VisibilityTimeout=300, MessageAttributeNames=["All"]
                                  ).get("Messages", [])
        fresh = 0
        for m in got:
            attrs = m.get("MessageAttributes", {})
            source = attrs.get(SOURCE_MESSAGE_ID, {}).get("StringValue") or m["MessageId"]
            if source not in found:
                fresh += 1
                found[source] = {"reason": attrs.get("vip_error", {}).get("StringValue"),
                                 "size": len(m["Body"])}
        empty = 0 if fresh else empty + 1
    return found


def test_the_daemon_survives_a_batch_of_malformed_messages(fuzz_daemon):
    daemon, sqs, sender, urls, ledger, proxy = fuzz_daemon
    batch = generated_messages()
    # The edge of SQS's size limit: a malformed body that fits the queue alone but not
    # the DLQ with the daemon's reason attributes (~1 KB), and a valid one at the limit.
    edge = "{" + "x" * (SQS_MAX_BYTES - 101)
    batch += [(edge, {}), (json.dumps({"jobId": "big", "userId": "u", "type": "fuzz",
                                       "timestamp": "2025-01-15T10:30:00Z",
                                       "payload": {"b": "y" * (SQS_MAX_BYTES - 200)}}), {})]
    rss_before = poller_rss_kb(daemon)
    sent: dict[str, str] = {}
    refused = 0
    for body, attributes in batch:
        kwargs = {"MessageAttributes": attributes} if attributes else {}
        if message_size(body, attributes) > SQS_MAX_BYTES:
            refused += 1  # SQS would refuse it: the app could never have sent it
            continue
        sent[sender.send_message(QueueUrl=urls["url"], MessageBody=body,
                                 **kwargs)["MessageId"]] = body
    edge_id = next(i for i, b in sent.items() if b == edge)
    wanted = {i: expected(b) for i, b in sent.items()}

    # A last valid message must still succeed: the daemon did not stall.
    final = sender.send_message(QueueUrl=urls["url"], MessageBody=json.dumps(
        {"jobId": "final", "userId": "u", "type": "fuzz", "timestamp": "2025-01-15T10:30:00Z",
         "payload": {}}))["MessageId"]
    daemon.wait_until(lambda: final in ledger.read_text().split(), timeout=90,
                      what="the final valid message handled")

    def queue_empty():
        attrs = sqs.get_queue_attributes(QueueUrl=urls["url"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attrs["Attributes"].values()) == 0

    daemon.wait_until(queue_empty, timeout=90, what="the fuzz queue drained")
    handled = set(ledger.read_text().split())
    dead = read_dlq(sqs, urls["dlq"])
    rss_after = poller_rss_kb(daemon)
    sizes = [len(b.encode()) for b in sent.values()]
    summary = {"tried": len(batch), "sent": len(sent), "refused_by_sqs_size": refused,
               "valid": sum(1 for v in wanted.values() if v == "handled"),
               "bodies_over_100kb": sum(1 for n in sizes if n > 100_000),
               "largest_body_bytes": max(sizes),
               "handled": sum(1 for i in sent if i in handled),
               "dead_lettered": sum(1 for i in sent if i in dead),
               "dlq_without_reason": sorted(i for i in sent if i in dead
                                            and not dead[i]["reason"]),
               "rss_kb_before": rss_before, "rss_kb_after": rss_after,
               "dead_letter_failed": len(daemon.events("message.dead_letter_failed")),
               "size_refusals_at_proxy": proxy.totals().get("size_refused", 0)}
    print(json.dumps(summary))

    assert len(batch) >= 100
    lost = [i for i in sent if i not in handled and i not in dead]
    assert not lost, f"lost messages: {[(i, sent[i][:80]) for i in lost]}"
    wrong = [(i, wanted[i], sent[i][:80]) for i in sent
             if (wanted[i] == "handled") != (i in handled)]
    assert not wrong, f"handled/dead-lettered against expectation: {wrong[:10]}"
    # Every dead letter carries its reason, except the one too big to carry it.
    assert not [i for i in summary["dlq_without_reason"] if i != edge_id], summary
    for event in ("poller.died", "poller.crashed", "consumer.task_crashed", "batch.failed"):
        assert not daemon.events(event), daemon.events(event)[:3]
    assert set(rss_after) == set(rss_before), "a poller was replaced"
    assert all(kb < 400_000 for kb in rss_after.values()), rss_after
    assert all(rss_after[p] - rss_before[p] < 200_000 for p in rss_after), summary


# -- a body too big for the DLQ once the reason is attached ------------------------------------


@pytest.fixture
def no_redrive_daemon(tmp_path, sqs_endpoint):
    """A queue WITHOUT a RedrivePolicy (the DLQ given as dlq_url), behind the size-enforcing
    proxy: nothing but the daemon can move a message to the DLQ."""
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")
    name = f"oversize-{time.time_ns()}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    proxy = SqsFaultProxy(sqs_endpoint, enforce_size_limit=True).start()
    path = write_config(
        tmp_path / "vip-worker.toml",
        {"fuzz": {"url": url, "dlq_url": dlq, "wait_time_s": 1, "visibility_timeout_s": 10,
                  "max_attempts": 3, "retry_backoff_base_s": 0.2, "retry_backoff_max_s": 0.5}},
        processes=1, log_level="INFO", metrics_interval_s=0, state_dir=str(tmp_path / "state"),
        plugin_dirs=[str(Path(__file__).resolve().parents[1] / "e2e" / "plugins")],
        plugins={"testjobs": {"ledger": str(tmp_path / "ledger.txt")}})
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d", path, proxy.url)
    try:
        daemon.wait_for("poller.ready", timeout=60)
        edge = "{" + "x" * (SQS_MAX_BYTES - 101)  # malformed; fits alone, not with a reason
        message_id = sqs.send_message(QueueUrl=url, MessageBody=edge)["MessageId"]
        yield daemon, sqs, {"url": url, "dlq": dlq}, message_id
    finally:
        daemon.kill()
        proxy.stop()


def test_a_body_too_big_for_its_reason_still_reaches_the_dlq(no_redrive_daemon):
    daemon, sqs, urls, message_id = no_redrive_daemon
    daemon.wait_until(lambda: daemon.events("message.dead_lettered", message_id=message_id)
                      or len(daemon.events("message.dead_letter_failed",
                                           message_id=message_id)) >= 3,
                      timeout=60, what="a dead letter or three refusals")
    got = sqs.receive_message(QueueUrl=urls["dlq"], WaitTimeSeconds=1,
                              MessageAttributeNames=["All"]).get("Messages", [])
    assert got and got[0]["MessageAttributes"].get(SOURCE_MESSAGE_ID, {}).get(
        "StringValue") == message_id
