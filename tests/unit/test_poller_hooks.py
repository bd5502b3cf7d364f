"""The poller start and stop hooks as ``call_hook`` runs them for several plugins."""

from __future__ import annotations

import asyncio
import textwrap
import types
from pathlib import Path

import pytest

from tests.fakes import make_settings
from vip_worker import hookimpl
from vip_worker.errors import HookFailed, PluginError
from vip_worker.pipeline.producer import Producer
from vip_worker.plugins.context import PollerContext
from vip_worker.plugins.hooks import call_hook
from vip_worker.plugins.manager import load_plugins, make_plugin_manager
from vip_worker.testing import capture_logs


def plugin(name: str, calls: list[str], fail: str = "", is_async: bool = False):
    """A plugin module whose start and stop hooks record their calls; ``fail`` names the
    hook ("start" or "stop") that then raises."""
    module = types.ModuleType(name)

    def record(what: str) -> None:
        calls.append(f"{name}.{what}")
        if what == fail:
            raise RuntimeError(f"{name} cannot {what}")

    if is_async:
        async def vip_worker_poller_start(context):
            await asyncio.sleep(0)
            record("start")

        async def vip_worker_poller_stop(context):
            await asyncio.sleep(0)
            record("stop")
    else:
        def vip_worker_poller_start(context):
            record("start")

        def vip_worker_poller_stop(context):
            record("stop")

    module.vip_worker_poller_start = hookimpl(vip_worker_poller_start)
    module.vip_worker_poller_stop = hookimpl(vip_worker_poller_stop)
    return module


def manager_of(*modules):
    manager = make_plugin_manager()
    for module in modules:
        manager.register(module, name=module.__name__)
    return manager


def context() -> PollerContext:
    return PollerContext(index=0, settings=None)


def test_every_stop_hook_runs_when_one_raises_and_the_error_names_each_failure():
    calls: list[str] = []
    # pluggy calls the last registered first: "first" raises before the others run.
    manager = manager_of(plugin("last", calls, fail="stop", is_async=True),
                         plugin("middle", calls),
                         plugin("first", calls, fail="stop"))
    with pytest.raises(HookFailed) as raised:
        asyncio.run(call_hook(manager.hook.vip_worker_poller_stop, context=context()))
    # stop hooks run in the reverse of the start order: the first registered first
    assert calls == ["last.stop", "middle.stop", "first.stop"]
    assert [p for p, _ in raised.value.failures] == ["last", "first"]
    text = str(raised.value)
    assert text.startswith("vip_worker_poller_stop failed: ")
    assert "plugin 'first': RuntimeError: first cannot stop" in text
    assert "plugin 'last': RuntimeError: last cannot stop" in text


def test_stop_hooks_that_all_succeed_raise_nothing_and_async_ones_are_awaited():
    calls: list[str] = []
    manager = manager_of(plugin("a", calls, is_async=True), plugin("b", calls))
    asyncio.run(call_hook(manager.hook.vip_worker_poller_stop, context=context()))
    assert calls == ["a.stop", "b.stop"]


def test_stop_hooks_run_in_the_reverse_of_the_start_order():
    calls: list[str] = []
    manager = manager_of(plugin("store", calls), plugin("cache", calls), plugin("app", calls))
    asyncio.run(call_hook(manager.hook.vip_worker_poller_start, context=context()))
    asyncio.run(call_hook(manager.hook.vip_worker_poller_stop, context=context()))
    assert calls == ["app.start", "cache.start", "store.start",
                     "store.stop", "cache.stop", "app.stop"]


def test_a_failing_start_hook_stops_the_start_naming_its_plugin():
    calls: list[str] = []
    manager = manager_of(plugin("later", calls), plugin("broken", calls, fail="start"))
    with pytest.raises(HookFailed) as raised:
        asyncio.run(call_hook(manager.hook.vip_worker_poller_start, context=context()))
    # The poller will not serve: the plugins after the failure open nothing.
    assert calls == ["broken.start"]
    assert "plugin 'broken': RuntimeError: broken cannot start" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_cancellation_is_never_collected():
    calls: list[str] = []
    module = types.ModuleType("cancelled")

    async def vip_worker_poller_stop(context):
        raise asyncio.CancelledError

    module.vip_worker_poller_stop = hookimpl(vip_worker_poller_stop)
    manager = manager_of(plugin("other", calls), module)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call_hook(manager.hook.vip_worker_poller_stop, context=context()))


def test_a_hook_wrapper_is_refused_at_load(tmp_path: Path):
    (tmp_path / "wrapping.py").write_text(textwrap.dedent("""
        from vip_worker import hookimpl

        @hookimpl(wrapper=True)
        def vip_worker_poller_stop(context):
            return (yield)
    """))
    with pytest.raises(PluginError) as raised:
        load_plugins(make_settings(plugin_dirs=[str(tmp_path)]))
    assert raised.value.plugin == "wrapping" and "hook wrappers" in str(raised.value)


def test_the_producer_runs_every_stop_hook_and_logs_the_failures():
    calls: list[str] = []
    producer = Producer(make_settings())
    producer.inline = types.SimpleNamespace(manager=manager_of(
        plugin("calm", calls), plugin("grumpy", calls, fail="stop")))
    # A handler of its own: another test may have made "vip_worker" stop propagating.
    with capture_logs("vip_worker.pipeline.producer", level=None) as collector:
        producer.close()  # does not raise
    assert calls == ["calm.stop", "grumpy.stop"]  # the reverse of the start order
    [record] = collector.records
    assert record.getMessage() == "producer.stop_hook_failed"
    assert "plugin 'grumpy'" in record.error


def test_after_a_failed_start_only_the_plugins_that_started_are_stopped():
    # What Poller.run does when a start hook fails: stop only those whose start returned.
    calls: list[str] = []
    manager = manager_of(plugin("never", calls), plugin("broken", calls, fail="start"),
                         plugin("opened", calls))

    async def boot():
        started: list[str] = []
        with pytest.raises(HookFailed):
            await call_hook(manager.hook.vip_worker_poller_start, context=context(),
                            done=started)
        await call_hook(manager.hook.vip_worker_poller_stop, context=context(),
                        only=set(started))
        return started

    assert asyncio.run(boot()) == ["opened"]
    assert calls == ["opened.start", "broken.start", "opened.stop"]


def test_a_long_running_task_that_dies_stops_the_poller_as_failed():
    from vip_worker.poller import Poller

    async def go():
        poller = Poller(make_settings(), 0, shm=[0.0] * 8)
        poller.stop_event = asyncio.Event()

        async def receive_loop():
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

        task = asyncio.get_running_loop().create_task(receive_loop(), name="receive-work")
        task.add_done_callback(poller.task_ended)
        with capture_logs("vip_worker.poller") as records:
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)  # the done callback
        return poller, records

    poller, records = asyncio.run(go())
    assert poller.stop_mode == "task_failed" and poller.stop_event.is_set()
    failed = records.events("poller.task_failed")
    assert [(r.task, r.error) for r in failed] == [
        ("receive-work", "RuntimeError: unable to perform operation on <TCPTransport closed=True>")]


def test_a_task_dying_during_a_stop_is_logged_and_keeps_the_stop_mode():
    from vip_worker.poller import Poller

    async def go():
        poller = Poller(make_settings(), 0, shm=[0.0] * 8)
        poller.stop_event = asyncio.Event()
        poller.request_stop("graceful")

        async def dies():
            raise RuntimeError("during the drain")

        task = asyncio.get_running_loop().create_task(dies(), name="heartbeat")
        task.add_done_callback(poller.task_ended)
        with capture_logs("vip_worker.poller") as records:
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)
        return poller, records

    poller, records = asyncio.run(go())
    assert poller.stop_mode == "graceful"
    assert [(r.task, r.stopping) for r in records.events("poller.task_failed")] == [
        ("heartbeat", "graceful")]


def test_the_stop_mode_becomes_the_exit_code():
    from vip_worker import exitcodes
    from vip_worker.poller import EXIT_CODES

    assert EXIT_CODES["task_failed"] == exitcodes.POLLER_TASK_FAILED
    assert EXIT_CODES["recycle"] == exitcodes.POLLER_RECYCLED
    assert "graceful" not in EXIT_CODES and "fast" not in EXIT_CODES  # exitcodes.OK
