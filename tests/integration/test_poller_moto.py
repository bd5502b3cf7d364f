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


def test_a_job_handed_back_more_often_than_max_receive_count_completes_once(
        sqs_endpoint, make_queue, tmp_path):
    # maxReceiveCount 2, and the poller is stopped (grace over: the running handler is
    # handed back) four times before the handler may finish. Each hand-back spends a
    # receive; at the second receive the consumer re-sends the message instead of leaving
    # it to SQS's redrive, so the job still completes, once, and nothing reaches the DLQ.
    from vip_worker.store.factory import open_store, provide_store

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    starts, finish = tmp_path / "starts", tmp_path / "finish"
    (plugins / "slowjobs.py").write_text(textwrap.dedent(f"""
        import asyncio, os
        from datetime import UTC, datetime
        from vip_worker import hookimpl

        async def slow(message, ctx):
            with open({str(starts)!r}, "a") as fh:
                fh.write(f"{{ctx.attempt}}\\n")
            while not os.path.exists({str(finish)!r}):
                await asyncio.sleep(0.02)
            ctx.store.save_result(message.job_id, "generated_content", {{"title": "done"}},
                                  datetime.now(UTC))

        @hookimpl
        def vip_worker_register_handlers(register):
            register("slow", slow)
    """))
    urls = make_queue("handback", max_receives=2)
    settings = config.load(environ={
        "VIP_WORKER_QUEUE_WORK_URL": urls["url"], "VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "1",
        "VIP_WORKER_QUEUE_WORK_MAX_ATTEMPTS": "10", "VIP_WORKER_GRACE_PERIOD_S": "0.1",
        "VIP_WORKER_PLUGIN_DIRS": str(plugins), "VIP_WORKER_METRICS_INTERVAL_S": "0",
        "VIP_WORKER_STATE_DIR": str(tmp_path / "state")})
    job_id = "65a4f0c2e4b0a1b2c3d4e5f6"
    client = make_client("us-east-1", sqs_endpoint)
    client.send_message(QueueUrl=urls["url"], MessageBody=envelope(job_id, type_="slow"))
    store = open_store(settings)

    def started() -> int:
        return len(starts.read_text().split()) if starts.exists() else 0

    def run_poller(until) -> int:
        async def main():
            poller = Poller(settings, 0, [0.0] * liveness.SIZE,
                            sqs_client=SqsClient(make_client("us-east-1", sqs_endpoint)),
                            providers=[provide_store])
            run = asyncio.create_task(poller.run())
            await wait_until_async(lambda: until() or run.done(), 30, interval_s=0.02,
                                   message="the poller's handler")
            assert not run.done(), "the poller ended on its own"
            poller.request_stop("graceful")
            return await run

        return asyncio.run(main())

    try:
        for n in range(1, 5):
            assert run_poller(lambda n=n: started() == n) == 0
            assert store.get_job(job_id)["status"] == "queued"
        finish.touch()
        assert run_poller(lambda: store.get_job(job_id)["status"] == "completed") == 0
        job = store.get_job(job_id)
        assert len(store.get_content("generated_content", job_id)) == 1
    finally:
        store.close()
    # Attempts are the handler starts, counted by the ledger: 1, 2, 3, 4, then 5.
    assert starts.read_text().split() == ["1", "2", "3", "4", "5"]
    assert (job["attempts"], job["leaseUntil"]) == (5, None)
    dlq = client.receive_message(QueueUrl=urls["dlq"], WaitTimeSeconds=0)
    assert dlq.get("Messages", []) == []
    left = client.receive_message(QueueUrl=urls["url"], WaitTimeSeconds=0)
    assert left.get("Messages", []) == []


def test_a_user_plugins_jobs_are_settled_by_the_daemon(sqs_endpoint, make_queue, tmp_path):
    # A plugin that never touches the job store: the daemon claims each job before the
    # handler and settles it after, so the producer's queued job ends completed or failed.
    from vip_worker.pipeline.producer import Producer
    from vip_worker.store.factory import open_store, provide_store

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "summaries.py").write_text(textwrap.dedent("""
        from vip_worker import PermanentError, hookimpl

        def summarize(message, ctx):
            if message.payload.get("text") == "":
                raise PermanentError("nothing to summarize")

        @hookimpl
        def vip_worker_register_handlers(register):
            register("summaries", summarize)
    """))
    urls = make_queue("summaries")
    env = {"VIP_WORKER_QUEUE_SUMMARIES_URL": urls["url"],
           "VIP_WORKER_QUEUE_SUMMARIES_WAIT_TIME_S": "1", "VIP_WORKER_PLUGIN_DIRS": str(plugins),
           "VIP_WORKER_METRICS_INTERVAL_S": "0", "VIP_WORKER_STATE_DIR": str(tmp_path / "s")}
    settings = config.load(environ=env)
    producer = Producer(settings, sqs_client=make_client("us-east-1", sqs_endpoint))
    good = producer.enqueue("summaries", {"text": "a long text"}, user_id="u-1")
    bad = producer.enqueue("summaries", {"text": ""}, user_id="u-1")
    producer.close()
    store = open_store(settings)
    assert [store.get_job(j)["status"] for j in (good, bad)] == ["queued", "queued"]

    def settled() -> bool:
        return all(store.get_job(j)["status"] in ("completed", "failed") for j in (good, bad))

    async def main():
        poller = Poller(settings, 0, [0.0] * liveness.SIZE,
                        sqs_client=SqsClient(make_client("us-east-1", sqs_endpoint)),
                        providers=[provide_store])
        run = asyncio.create_task(poller.run())
        await wait_until_async(lambda: settled() or run.done(), 30, interval_s=0.02,
                               message="both jobs to settle")
        poller.request_stop("graceful")
        return await run

    try:
        assert asyncio.run(main()) == 0
        done, failed = store.get_job(good), store.get_job(bad)
    finally:
        store.close()
    assert (done["status"], done["progress"], done["attempts"]) == ("completed", 100, 1)
    assert (failed["status"], failed["error"]) == (
        "failed", "PermanentError: nothing to summarize")
