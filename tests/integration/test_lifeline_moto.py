"""The lifeline in a whole poller (``Poller.run``) against moto's server over HTTP: an
orphaned job is re-sent by the sweep and completes through the poller's own handler."""

from __future__ import annotations

import asyncio
import json
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.sqs import queue_counts
from tests.support.wait import wait_until_async
from vip_worker import config, liveness
from vip_worker.poller import Poller
from vip_worker.sqs.boto import SqsClient, make_client
from vip_worker.store.sqlite import SqliteStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HANDLER = """
from datetime import UTC, datetime

from vip_worker import hookimpl


def work(message, ctx):
    # The daemon has claimed the job for this delivery (a duplicate of a completed job
    # never reaches the handler): every call here is a generation.
    with open(GENERATIONS, "a") as fh:  # one line per generation
        fh.write(message.job_id + "\\n")
    ctx.store.save_result(message.job_id, "generated_content",
                          {"topic": message.payload["topic"]}, datetime.now(UTC))


@hookimpl
def vip_worker_register_handlers(register):
    register("work", work)
"""


@pytest.mark.parametrize("index, swept", [(0, True), (1, False)])
def test_an_orphaned_job_is_resent_and_completes_through_a_poller(
        sqs_endpoint, make_queue, sqs, tmp_path, index, swept):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    generations = tmp_path / "generations"
    (plugins / "lifeline_work.py").write_text(
        f"GENERATIONS = {str(generations)!r}\n" + textwrap.dedent(HANDLER))
    urls = make_queue("lifeline")
    path = str(tmp_path / "jobs.sqlite3")
    settings = config.load(environ={
        "VIP_WORKER_QUEUE_WORK_URL": urls["url"], "VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "1",
        "VIP_WORKER_PLUGIN_DIRS": str(plugins), "VIP_WORKER_METRICS_INTERVAL_S": "0",
        "VIP_WORKER_LIFELINE_INTERVAL_S": "0.2"})
    # A poller claimed the job an hour ago and died: its lease ran out, its message is
    # gone (deleted, or dead-lettered), and nothing will ever deliver the job again.
    store = SqliteStore(path)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    store.claim("orphan-1", user_id="u1", type="work", params={"topic": "lost"},
                message_id="m-dead", lease_s=60, now=an_hour_ago, delivery="d-dead",
                queue="work")

    def provide(context):
        context.provide("store", lambda: SqliteStore(path), close=lambda s: s.close())

    client = make_client("us-east-1", sqs_endpoint)
    shm = [0.0] * liveness.SIZE

    async def main():
        poller = Poller(settings, index, shm, sqs_client=SqsClient(client), providers=[provide])
        run = asyncio.create_task(poller.run())
        try:
            if swept:
                await wait_until_async(
                    lambda: store.get_job("orphan-1")["status"] == "completed" or run.done(),
                    30, interval_s=0.05, message="the orphan to be re-sent and completed")
            else:
                # Poller 1 serves, but only poller 0 sweeps: a job of its own goes through.
                sqs.send_message(QueueUrl=urls["url"], MessageBody=json.dumps({
                    "jobId": "fresh-1", "userId": "u1", "type": "work",
                    "timestamp": "2025-01-15T10:30:00Z", "payload": {"topic": "t"}}))
                await wait_until_async(
                    lambda: (store.get_job("fresh-1") or {}).get("status") == "completed"
                    or run.done(), 30, interval_s=0.05, message="a fresh job to complete")
                assert not any(t.get_name() == "lifeline" for t in poller.tasks)
            assert not run.done(), "the poller ended early"
        finally:
            poller.request_stop("graceful")
        return await run

    try:
        assert asyncio.run(main()) == 0
        job = store.get_job("orphan-1")
        if swept:
            assert (job["status"], job["rescues"], job["lostClaims"], job["attempts"]) == (
                "completed", 1, 1, 2)
            (content,) = store.get_content("generated_content", "orphan-1")  # generated once
            assert content["topic"] == "lost"
            assert queue_counts(sqs, urls["url"]) == (0, 0)
            assert generations.read_text() == "orphan-1\n"
        else:
            assert (job["status"], job["rescues"]) == ("processing", 0)
    finally:
        store.close()


def test_a_wrong_guess_costs_one_duplicate_message_never_a_second_generation(
        sqs_endpoint, make_queue, sqs, tmp_path):
    # The job looked lost (queued for 2 h, its queue empty) but its message was only late:
    # the lifeline re-sends it, and the late original then finds the job completed.
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    generations = tmp_path / "generations"
    (plugins / "lifeline_work.py").write_text(
        f"GENERATIONS = {str(generations)!r}\n" + textwrap.dedent(HANDLER))
    urls = make_queue("lifeline")
    path = str(tmp_path / "jobs.sqlite3")
    settings = config.load(environ={
        "VIP_WORKER_QUEUE_WORK_URL": urls["url"], "VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "1",
        "VIP_WORKER_PLUGIN_DIRS": str(plugins), "VIP_WORKER_METRICS_INTERVAL_S": "0",
        "VIP_WORKER_LIFELINE_INTERVAL_S": "0.2"})
    store = SqliteStore(path)
    store.create_job("late-1", "u1", "work", {"topic": "late"},
                     datetime.now(UTC) - timedelta(hours=2), queue="work")

    def provide(context):
        context.provide("store", lambda: SqliteStore(path), close=lambda s: s.close())

    client = make_client("us-east-1", sqs_endpoint)

    async def main():
        poller = Poller(settings, 0, [0.0] * liveness.SIZE, sqs_client=SqsClient(client),
                        providers=[provide])
        run = asyncio.create_task(poller.run())
        try:
            await wait_until_async(
                lambda: store.get_job("late-1")["status"] == "completed" or run.done(),
                30, interval_s=0.05, message="the re-sent job to complete")
            sqs.send_message(QueueUrl=urls["url"], MessageBody=json.dumps({
                "jobId": "late-1", "userId": "u1", "type": "work",
                "timestamp": "2025-01-15T10:30:00Z", "payload": {"topic": "late"}}))
            await wait_until_async(
                lambda: (poller.consumer is not None and poller.consumer.handled >= 2)
                or run.done(), 30, interval_s=0.05, message="the late original handled")
            assert not run.done(), "the poller ended early"
        finally:
            poller.request_stop("graceful")
        return await run

    try:
        assert asyncio.run(main()) == 0
        assert generations.read_text() == "late-1\n"  # generated once
        assert len(store.get_content("generated_content", "late-1")) == 1
        assert store.get_job("late-1")["rescues"] == 1
        assert queue_counts(sqs, urls["url"]) == (0, 0)  # the duplicate was deleted
    finally:
        store.close()
