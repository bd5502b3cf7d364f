"""The spine's rules written once: the outcome decision, the in-flight states, the stop
modes, the context's resources, and a spine that does not import the pipeline or the store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import types

import pytest

from tests.fakes import ConsumerHarness, FakeSqs, make_queue_settings, make_settings, wait_until
from vip_worker import exitcodes, hookimpl, liveness
from vip_worker.errors import DependencyUnavailable, MalformedMessage, PermanentError, RetryLater
from vip_worker.inflight import InFlight, State
from vip_worker.outcomes import Action, decide
from vip_worker.plugins.context import PollerContext
from vip_worker.plugins.manager import LoadedPlugins, make_plugin_manager
from vip_worker.plugins.registry import HandlerRegistry
from vip_worker.poller import EXIT_CODES, Poller, StopMode
from vip_worker.testing import capture_logs, make_message, run_handler

pytestmark = pytest.mark.timeout(30)


# -- one outcome rule ------------------------------------------------------------------


@pytest.mark.parametrize(("error", "receive_count", "action", "delay_s"), [
    (None, 5, Action.ACK, None),
    (PermanentError("bad"), 1, Action.DEAD_LETTER, None),
    (MalformedMessage("not json"), 1, Action.DEAD_LETTER, None),
    (ValueError("flaky"), 1, Action.RETRY, 10.0),
    (ValueError("flaky"), 3, Action.RETRY, 40.0),
    (ValueError("flaky"), 5, Action.DEAD_LETTER, None),
    (RetryLater("slow down", delay_s=7), 1, Action.RETRY, 7),
    (RetryLater("slow down", delay_s=7), 5, Action.DEAD_LETTER, None),
    (DependencyUnavailable("store down"), 5, Action.RETRY, 160.0),
])
def test_decide_turns_an_error_and_the_attempt_into_one_action(error, receive_count, action,
                                                               delay_s):
    decision = decide(error, receive_count, max_attempts=5, backoff_base_s=10.0,
                      backoff_max_s=900.0, rand=lambda: 1.0)
    assert (decision.action, decision.delay_s, decision.error) == (action, delay_s, error)
    assert decision.reason == ("" if error is None else f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("error", [None, PermanentError("bad"), ValueError("flaky"),
                                   RetryLater("later", delay_s=3), DependencyUnavailable("down")])
@pytest.mark.parametrize("receive_count", [1, 5])
def test_run_handler_reports_what_decide_says(error, receive_count):
    def handler(message, ctx):
        if error is not None:
            raise error

    outcome = run_handler(handler, make_message("t"), receive_count=receive_count,
                          max_attempts=5)
    decision = decide(error, receive_count, 5, 10.0, 900.0, rand=lambda: 1.0)
    kind = {Action.ACK: "succeeded", Action.RETRY: "retried",
            Action.DEAD_LETTER: "dead_lettered"}[decision.action]
    assert (outcome.kind, outcome.delay_s, outcome.error) == (kind, decision.delay_s, error)


# -- the consumer's two log fixes ----------------------------------------------------------


def test_the_first_retry_with_a_one_second_base_waits_one_second_and_says_so():
    def flaky(message, ctx):
        raise ValueError("flaky")

    # rand 0: the backoff is 0.5 s, which SQS cannot take: it waits 1 s, not 0.
    h = ConsumerHarness({"articles": flaky}, retry_backoff_base_s=1.0)
    h.send(make_message("articles").to_body())
    with capture_logs("vip_worker.consumer") as records:
        h.run(lambda consumer: wait_until(
            lambda: h.fake.calls_to("change_visibility_batch") and h.idle()))
    (message,) = h.fake.messages(h.url)
    assert h.fake.calls_to("change_visibility_batch") == [(h.url, [("0", message.receipt, 1)])]
    (record,) = records.events("message.retried")
    assert record.delay_s == 1


def test_dead_lettered_rounds_its_duration():
    h = ConsumerHarness({})

    def slow_and_wrong(message, ctx):
        h.clock.advance(0.00026894500001617416)
        raise PermanentError("refused")

    h.registry.add("testplugin", "articles", slow_and_wrong)
    h.send(make_message("articles").to_body())
    with capture_logs("vip_worker.consumer") as records:
        h.run(lambda consumer: wait_until(lambda: h.fake.messages(h.dlq_url) and h.idle()))
    (record,) = records.events("message.dead_lettered")
    assert record.duration_s == 0.0003


# -- in-flight states ------------------------------------------------------------------------


def held(receive_count: int = 1) -> InFlight:
    return InFlight(queue=make_queue_settings("https://q/work"), message_id="m", receipt="r",
                    body="{}", receive_count=receive_count, received_at=0.0, visible_until=30.0)


def test_an_in_flight_message_is_settled_once():
    item = held()
    assert (item.state, item.settled, item.started) == (State.RECEIVED, False, False)
    item.start()
    assert (item.state, item.settled, item.started) == (State.RUNNING, False, True)
    assert item.settle()
    assert (item.state, item.settled) == (State.SETTLING, True)
    assert not item.settle(State.HANDED_BACK)  # the shutdown came second: nothing to do
    assert item.state is State.SETTLING


def test_a_hand_back_wins_over_a_later_outcome():
    item = held()
    item.start()
    assert item.settle(State.HANDED_BACK)
    assert not item.settle()
    assert (item.state, item.started) == (State.HANDED_BACK, True)


def test_the_consumer_runs_a_message_through_its_states():
    seen = []
    h = ConsumerHarness({})

    def handler(message, ctx):
        seen.extend(i.state for i in h.consumer.held.values())

    h.registry.add("testplugin", "articles", handler)
    h.send(make_message("articles").to_body())
    items = []

    async def scenario(consumer):
        hold = consumer.hold
        consumer.hold = lambda item: (items.append(item), hold(item))
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle())

    h.run(scenario)
    assert seen == [State.RUNNING]
    assert [i.state for i in items] == [State.DONE]


# -- stop modes -------------------------------------------------------------------------------


def test_a_fast_stop_overrides_an_earlier_mode_and_nothing_overrides_the_first_otherwise():
    poller = Poller(settings=None, index=0, shm=[0.0] * 9)
    poller.request_stop(StopMode.RECYCLE)
    poller.request_stop(StopMode.GRACEFUL)
    assert poller.stop_mode is StopMode.RECYCLE
    poller.request_stop("fast")  # the arbiter's word for SIGINT
    assert poller.stop_mode is StopMode.FAST and poller.stop_event.is_set()
    assert EXIT_CODES.get(poller.stop_mode) is None  # exit 0


def test_an_unknown_stop_mode_is_refused():
    with pytest.raises(ValueError):
        Poller(settings=None, index=0, shm=[0.0] * 9).request_stop("soon")


# -- the context's resources ----------------------------------------------------------------


def test_a_provided_resource_opens_once_on_first_use_and_closes_last_first():
    context = PollerContext(index=0, settings=None)
    log = []

    def opener(name):
        def open_():
            log.append(("open", name))
            return name.upper()
        return open_

    context.provide("store", opener("store"), close=lambda r: log.append(("close", r)))
    context.provide("cache", opener("cache"), close=lambda r: log.append(("close", r)))
    assert log == []  # nothing opens before it is used
    threads = [threading.Thread(target=context.resource, args=("cache",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert context.store == "STORE" and context.resource("cache") == "CACHE"
    context.close()
    assert log == [("open", "cache"), ("open", "store"), ("close", "STORE"), ("close", "CACHE")]


def test_the_poller_runs_its_providers_before_the_start_hooks_and_closes_after_the_stop_hooks():
    fake = FakeSqs()
    dlq = fake.create_queue("work-dlq")
    url = fake.create_queue("work", dlq_url=dlq)
    settings = make_settings([make_queue_settings(url, dlq_url=dlq)])
    events = []
    module = types.ModuleType("starter")
    module.vip_worker_poller_start = hookimpl(
        lambda context: events.append(("start sees", context.resource("db"))))
    module.vip_worker_poller_stop = hookimpl(lambda context: events.append(("stop",)))
    manager = make_plugin_manager()
    manager.register(module, name="starter")

    def provide(context):
        context.provide("db", lambda: events.append(("open",)) or "DB",
                        close=lambda db: events.append(("close", db)))

    async def open_and_close():
        poller = Poller(settings, 0, [0.0] * liveness.SIZE, sqs_client=fake, providers=[provide],
                        loaded=LoadedPlugins(manager, HandlerRegistry(), []))
        assert await poller.open()
        return await poller.close()

    assert asyncio.run(open_and_close()) == exitcodes.OK
    assert events == [("open",), ("start sees", "DB"), ("stop",), ("close", "DB")]


def test_a_store_nobody_provides_is_a_lookup_error_naming_it():
    with pytest.raises(LookupError, match="'store'"):
        _ = PollerContext(index=0, settings=None).store


# -- the spine does not import the pipeline or the store -----------------------------------

SPINE = ["poller", "consumer", "heartbeat", "inflight", "outcomes", "plugins",
         "plugins.context", "plugins.hooks", "plugins.manager", "plugins.registry",
         "plugins.settings", "plugins.hookspecs"]


def test_the_spine_imports_neither_the_pipeline_nor_the_store():
    code = ("import importlib, sys\n"
            "bad = {}\n"
            f"for name in {SPINE!r}:\n"
            "    importlib.import_module('vip_worker.' + name)\n"
            "    found = [m for m in sys.modules\n"
            "             if m.startswith(('vip_worker.store', 'vip_worker.pipeline'))]\n"
            "    if found:\n"
            "        bad[name] = found\n"
            "        break\n"
            "print(bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "{}"
