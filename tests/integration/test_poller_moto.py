"""A whole poller (``Poller.run``) in this process, against moto's server over HTTP."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from tests.support.sqs import envelope
from tests.support.wait import wait_until_async
from vip_worker import config, liveness
from vip_worker import poller as poller_module
from vip_worker.poller import Poller
from vip_worker.sqs.boto import SqsClient, make_client

pytestmark = pytest.mark.integration


def test_what_the_drain_settles_reaches_the_masters_counters(sqs_endpoint, make_queue,
                                                             tmp_path, monkeypatch):
    # The master adds an exited poller's shared-memory counters to its totals. A message
    # that finishes during the drain is deleted after the tick (which copies them) has
    # run for the last time: it must still be counted there.
    # The tick copies the counters too: only its first pass (at start, all zero) runs.
    monkeypatch.setattr(poller_module, "TICK_S", 3600)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    started = tmp_path / "started"
    (plugins / "slowjobs.py").write_text(textwrap.dedent(f"""
        import time
        from vip_worker import hookimpl

        def slow(message, ctx):
            open({str(started)!r}, "w").close()
            time.sleep(0.3)  # slow on purpose: it finishes during the drain

        @hookimpl
        def vip_worker_register_handlers(register):
            register("slow", slow)
    """))
    urls = make_queue("drain")
    settings = config.load(environ={
        "VIP_WORKER_QUEUE_WORK_URL": urls["url"], "VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "1",
        "VIP_WORKER_PLUGIN_DIRS": str(plugins), "VIP_WORKER_METRICS_INTERVAL_S": "0"})
    client = make_client("us-east-1", sqs_endpoint)
    client.send_message(QueueUrl=urls["url"], MessageBody=envelope(type_="slow"))
    shm = [0.0] * liveness.SIZE

    async def main():
        poller = Poller(settings, 0, shm, sqs_client=SqsClient(client))
        run = asyncio.create_task(poller.run())
        await wait_until_async(lambda: started.exists() or run.done(), 30, interval_s=0.01,
                               message="the handler to start")
        assert not run.done(), "the poller ended before the handler ran"
        poller.request_stop("graceful")
        return await run

    assert asyncio.run(main()) == 0
    assert shm[liveness.COUNTERS["succeeded"]] == 1
    assert shm[liveness.COUNTERS["handled"]] == 1
    assert shm[liveness.INFLIGHT] == 0
