"""The consumer's outcomes on a fake SQS: ack, retry, dead-letter, and what goes wrong there."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import types

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.sqs import envelope
from vip_worker import outcomes as retry
from vip_worker.errors import PermanentError, PluginError, RetryLater
from vip_worker.sqs.queues import resolve_dlq

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def consumer_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vip_worker")
    return caplog


def events(caplog, name):
    return [r for r in caplog.records if r.getMessage() == name]


def fail_with(error):
    def handler(message, ctx):
        raise error

    return handler


def settle(h: ConsumerHarness, condition):
    """Run the consumer until ``condition()`` holds and nothing is left in flight."""

    async def scenario(consumer):
        await wait_until(lambda: condition() and h.idle(), what="the consumer to settle")
        return consumer

    return h.run(scenario)


def dlq_attributes(h):
    (message,) = h.fake.messages(h.dlq_url)
    return message, {k: v["StringValue"] for k, v in message.attributes.items()}


# -- success ---------------------------------------------------------------------------


def test_success_deletes_the_message_in_a_batch_call():
    seen = []

    def handler(message, ctx):
        seen.append((message.job_id, ctx.message_id, ctx.job_id, ctx.receive_count,
                     ctx.max_attempts, ctx.queue, threading.current_thread().name))

    h = ConsumerHarness({"articles": handler})
    message_id = h.send(envelope(job_id="job-1"))
    consumer = settle(h, lambda: h.fake.deleted(h.url))
    assert h.fake.messages(h.url) == []
    assert [m.message_id for m in h.fake.deleted(h.url)] == [message_id]
    (call,) = h.fake.calls_to("delete_batch")
    assert call == (h.url, [("0", f"{message_id}#1")])
    assert seen[0][:6] == ("job-1", message_id, "job-1", 1, 5, "work")
    assert seen[0][6].startswith("handler")  # a def handler runs in the handler pool
    assert (consumer.handled, consumer.held, consumer.heartbeat.items) == (1, {}, {})


def test_succeeded_messages_are_logged_one_line_per_delete_batch(consumer_logs):
    async def handler(message, ctx):
        return None

    h = ConsumerHarness({"articles": handler})
    ids = {h.send(envelope(job_id=f"job-{n}")): f"job-{n}" for n in range(3)}
    settle(h, lambda: len(h.fake.deleted(h.url)) == 3)
    lines = events(consumer_logs, "messages.succeeded")
    # The three finish together: one delete call, one line that names each of them.
    assert len(h.fake.calls_to("delete_batch")) == 1 and len(lines) == 1
    (line,) = lines
    assert (line.queue, line.count) == ("work", 3)
    assert {m["message_id"]: m["job_id"] for m in line.messages} == ids
    assert all(m["type"] == "articles" and m["receive_count"] == 1 and m["duration_s"] >= 0
               for m in line.messages)
    assert not events(consumer_logs, "message.succeeded")


def test_a_message_whose_delete_fails_is_not_logged_as_succeeded(consumer_logs):
    h = ConsumerHarness({"articles": lambda message, ctx: None})
    message_id = h.send(envelope())
    h.fake.fail_entries([message_id], "InternalError")
    consumer = settle(h, lambda: h.fake.calls_to("delete_batch"))
    assert events(consumer_logs, "message.delete_failed")
    assert not events(consumer_logs, "messages.succeeded")
    assert consumer.stats["succeeded"] == 0 and consumer.stats["busy_s"] == 0
    assert consumer.queue_metrics["work"].empty()


@pytest.mark.parametrize("outcome", ["cancelled", "raised"])
def test_a_delete_that_never_answered_is_not_counted_as_succeeded(consumer_logs, outcome):
    h = ConsumerHarness({"articles": lambda message, ctx: None})
    consumer = h.make_consumer()
    item = types.SimpleNamespace(queue=types.SimpleNamespace(name="work"))

    async def go():
        future = asyncio.get_running_loop().create_future()
        if outcome == "cancelled":
            future.cancel()
        else:
            future.set_exception(ConnectionError("batcher broke"))
        consumer.deleted(item, 0.5, {"message_id": "m1", "queue": "work"}, future)
        await asyncio.sleep(0)

    asyncio.run(go())
    (line,) = events(consumer_logs, "message.delete_failed")
    assert line.error_code == ("Cancelled" if outcome == "cancelled" else "ConnectionError")
    assert consumer.stats["succeeded"] == 0


def test_an_async_handler_runs_on_the_loop_and_succeeds():
    seen = []

    async def handler(message, ctx):
        await asyncio.sleep(0)
        seen.append((message.payload, threading.current_thread() is threading.main_thread()))

    h = ConsumerHarness({"images": handler})
    h.send(envelope(type_="images", payload={"prompt": "a cat"}))
    settle(h, lambda: h.fake.deleted(h.url))
    assert seen == [({"prompt": "a cat"}, True)]


def test_the_message_is_heartbeated_only_while_it_runs():
    tracked = []

    async def handler(message, ctx):
        tracked.append(len(h.consumer.heartbeat.items))

    h = ConsumerHarness({"articles": handler})
    h.send(envelope())
    consumer = settle(h, lambda: h.fake.deleted(h.url))
    assert tracked == [1]
    assert consumer.heartbeat.items == {}


def test_handlers_see_their_plugin_settings_and_the_pollers_resources():
    seen = []

    def handler(message, ctx):
        seen.append((ctx.plugin_settings, ctx.resources is h.consumer.context.resources))

    h = ConsumerHarness({"articles": handler},
                        worker={"plugin_settings": {"testplugin": {"mode": "x"}}})
    h.send(envelope())
    settle(h, lambda: h.fake.deleted(h.url))
    assert seen == [({"mode": "x"}, True)]


# -- transient failures --------------------------------------------------------------------


def test_a_plain_exception_retries_after_the_backoff(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(ValueError("flaky"))})
    message_id = h.send(envelope())
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    # receive 1, base 10 s, rand 0: half of min(900, 10 * 2**0)
    assert h.fake.calls_to("change_visibility_batch") == [(h.url, [("0", message.receipt, 5)])]
    assert message.visible_at == h.clock.now() + 5
    assert h.fake.calls_to("delete_batch") == [] and h.fake.messages(h.dlq_url) == []
    (record,) = events(consumer_logs, "message.retried")
    assert (record.message_id, record.error_class, record.delay_s) == (message_id, "ValueError", 5)
    assert record.exc_info is not None  # an unexpected error keeps its traceback


def test_the_backoff_grows_with_the_receive_count():
    h = ConsumerHarness({"articles": fail_with(ValueError("flaky"))})
    h.send(envelope())
    for _ in range(3):  # three earlier deliveries that came back
        h.fake.take(h.url, 1, 0)
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.receive_count == 4
    assert message.visible_at == h.clock.now() + 40


def test_retry_later_uses_its_own_delay(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(RetryLater("rate limited", delay_s=7))})
    h.send(envelope())
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.fake.messages(h.url)[0].visible_at == h.clock.now() + 7
    record = events(consumer_logs, "message.retried")[0]
    assert (record.error_class, record.exc_info) == ("RetryLater", None)


def test_retry_later_without_delay_uses_the_backoff():
    h = ConsumerHarness({"articles": fail_with(RetryLater("busy"))})
    h.send(envelope())
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.fake.messages(h.url)[0].visible_at == h.clock.now() + 5


def test_a_handler_past_max_job_time_is_abandoned_and_retried(consumer_logs):
    cancelled = []

    async def handler(message, ctx):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    h = ConsumerHarness({"articles": handler}, max_job_time_s=0.05)
    h.send(envelope())
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    assert h.fake.messages(h.url)[0].visible_at == h.clock.now() + 5
    assert cancelled == [True]
    record = events(consumer_logs, "message.retried")[0]
    assert record.error_class == "JobTimedOut" and "max_job_time_s" in record.error


def test_a_blocking_handler_past_max_job_time_is_abandoned_and_counted():
    release = threading.Event()
    h = ConsumerHarness({"articles": lambda message, ctx: release.wait(10)},
                        max_job_time_s=0.05)
    h.send(envelope())
    try:
        consumer = settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    finally:
        release.set()  # the thread cannot be stopped: let it return
    assert consumer.abandoned_threads == 1
    assert h.fake.messages(h.url)[0].visible_at == h.clock.now() + 5


# -- dead-lettering -------------------------------------------------------------------------


def test_the_last_attempt_goes_to_the_dlq_with_the_reason():
    h = ConsumerHarness({"articles": fail_with(ValueError("still broken"))}, max_attempts=3)
    body = envelope()
    message_id = h.send(body)
    for _ in range(2):
        h.fake.take(h.url, 1, 0)
    settle(h, lambda: h.fake.messages(h.dlq_url))
    message, attrs = dlq_attributes(h)
    assert message.body == body
    assert attrs["vip_error_class"] == "ValueError"
    assert attrs["vip_error"] == "still broken"
    assert attrs["vip_attempts"] == "3"
    assert attrs["vip_source_queue"] == "work"
    assert attrs["vip_source_message_id"] == message_id
    assert h.fake.messages(h.url) == []  # deleted from the source


def test_a_permanent_error_goes_to_the_dlq_at_once():
    h = ConsumerHarness({"articles": fail_with(PermanentError("wordCount must be 50..20000"))})
    h.send(envelope())
    settle(h, lambda: h.fake.messages(h.dlq_url))
    _, attrs = dlq_attributes(h)
    assert (attrs["vip_error_class"], attrs["vip_attempts"]) == ("PermanentError", "1")
    assert attrs["vip_error"] == "wordCount must be 50..20000"
    assert h.fake.messages(h.url) == []


def test_original_message_attributes_travel_to_the_dlq():
    h = ConsumerHarness({"articles": fail_with(PermanentError("no"))})
    h.fake.send(h.url, envelope(), {"trace": {"DataType": "String", "StringValue": "t-9"}})
    settle(h, lambda: h.fake.messages(h.dlq_url))
    assert dlq_attributes(h)[1]["trace"] == "t-9"


@pytest.mark.parametrize(("body", "error_class", "words"), [
    ("{not json", "MalformedMessage", "not valid JSON"),
    (json.dumps({"jobId": "j", "type": "articles"}), "MalformedMessage", "'userId'"),
    (envelope(type_="videos"), "UnknownMessageType", "'videos'"),
])
def test_bad_messages_go_to_the_dlq_at_once_without_running(body, error_class, words):
    ran = []
    h = ConsumerHarness({"articles": lambda message, ctx: ran.append(message)})
    h.send(body)
    settle(h, lambda: h.fake.messages(h.dlq_url))
    message, attrs = dlq_attributes(h)
    assert message.body == body
    assert attrs["vip_error_class"] == error_class
    assert words in attrs["vip_error"]
    assert (ran, h.fake.messages(h.url)) == ([], [])


def test_without_a_dlq_the_message_is_kept_and_comes_back_later(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(PermanentError("bad"))}, dlq=False)
    h.send(envelope())
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.visible_at == h.clock.now() + h.queue.retry_backoff_max_s
    assert h.fake.calls_to("delete_batch") == []
    assert len(h.fake.calls_to("send")) == 1  # the test's own
    (record,) = events(consumer_logs, "message.dead_letter_unavailable")
    assert record.levelno == logging.ERROR and record.error_class == "PermanentError"


def test_a_failed_dlq_send_keeps_the_message(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(PermanentError("bad"))})
    h.send(envelope())
    h.fake.fail_next("send", "KMS.ThrottlingException")
    settle(h, lambda: h.fake.calls_to("change_visibility_batch"))
    (message,) = h.fake.messages(h.url)
    assert message.visible_at == h.clock.now() + 5
    assert h.fake.messages(h.dlq_url) == [] and h.fake.calls_to("delete_batch") == []
    (record,) = events(consumer_logs, "message.dead_letter_failed")
    assert record.send_error_code == "KMS.ThrottlingException"


def test_a_dlq_that_refuses_the_copy_as_too_large_gets_the_body_alone(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(PermanentError("bad"))})
    h.send(envelope())
    h.fake.fail_next("send", "InvalidParameterValue")  # a DLQ with a small MaximumMessageSize
    settle(h, lambda: h.fake.messages(h.dlq_url))
    (copy,) = h.fake.messages(h.dlq_url)
    assert copy.attributes == {}
    assert h.fake.messages(h.url) == []
    assert events(consumer_logs, "message.dead_letter_attributes_dropped")
    assert events(consumer_logs, "message.dead_lettered")


def test_the_dlq_copy_is_budgeted_to_the_dlqs_own_size_limit(consumer_logs):
    h = ConsumerHarness({"articles": fail_with(PermanentError("r" * 900))})
    h.dlq_limits["work"] = 2048
    body = envelope(payload={"topic": "t" * 1500})
    h.send(body)
    settle(h, lambda: h.fake.messages(h.dlq_url))
    (copy,) = h.fake.messages(h.dlq_url)
    assert copy.body == body and "vip_source_message_id" in copy.attributes
    assert len(body) + retry.attributes_size(copy.attributes) <= 2048
    assert copy.attributes["vip_error"]["StringValue"].endswith("...")  # shortened to fit
    assert not events(consumer_logs, "message.dead_letter_attributes_dropped")


def test_a_body_over_the_dlq_limit_is_sent_alone_in_one_call(consumer_logs):
    h = ConsumerHarness({"articles": lambda message, ctx: (_ for _ in ()).throw(
        PermanentError("bad"))})
    h.dlq_limits["work"] = 1024
    body = envelope(payload={"topic": "t" * 1500})
    h.send(body)
    settle(h, lambda: h.fake.messages(h.dlq_url))
    (copy,) = h.fake.messages(h.dlq_url)
    assert copy.body == body and not copy.attributes
    # One send to the DLQ, not a refused copy with attributes first.
    assert [args[0] for args in h.fake.calls_to("send")].count(h.dlq_url) == 1
    (line,) = events(consumer_logs, "message.dead_letter_attributes_dropped")
    assert "1024" in line.detail


def test_a_failed_delete_is_logged(consumer_logs):
    h = ConsumerHarness({"articles": lambda message, ctx: None})
    message_id = h.send(envelope())
    h.fake.fail_entries([message_id], "InternalError")
    settle(h, lambda: h.fake.calls_to("delete_batch"))
    assert len(h.fake.messages(h.url)) == 1
    (record,) = events(consumer_logs, "message.delete_failed")
    assert (record.message_id, record.error_code) == (message_id, "InternalError")


# -- the DLQ lookup at poller start ------------------------------------------------------------


def test_the_dlq_is_found_from_the_redrive_policy():
    h = ConsumerHarness({})
    found = asyncio.run(resolve_dlq(h.sqs, h.queue))
    assert found == h.dlq_url
    explicit = dataclasses.replace(h.queue, dlq_url="https://sqs.example/q/other")
    assert asyncio.run(resolve_dlq(h.sqs, explicit)) == "https://sqs.example/q/other"
    bare = ConsumerHarness({}, dlq=False)
    assert asyncio.run(resolve_dlq(bare.sqs, bare.queue)) is None


# -- handlers that look synchronous but return a coroutine -------------------------------------


class AsyncCallable:
    """A handler object with ``async def __call__``: inspect.iscoroutinefunction says False."""

    def __init__(self, ran):
        self.ran = ran

    async def __call__(self, message, ctx):
        self.ran.append(message.job_id)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
def test_a_handler_returning_a_coroutine_is_awaited_or_refused():
    ran = []
    try:
        h = ConsumerHarness({"articles": AsyncCallable(ran)})
    except PluginError:
        return  # refusing it at registration is a correct outcome too
    h.send(envelope(job_id="j1"))
    settle(h, lambda: h.fake.deleted(h.url) or h.fake.calls_to("change_visibility_batch"))
    assert ran == ["j1"] or not h.fake.deleted(h.url)
