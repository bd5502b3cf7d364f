"""A pytest plugin for plugin authors: run handlers through a real poller on local SQS.

Installed with vip-worker (entry point ``pytest11``), it gives two fixtures:

- ``vip_worker_sqs_endpoint``: moto's SQS server on 127.0.0.1 (session-wide),
  with fake credentials and the EC2 metadata lookup disabled;
- ``vip_worker_poller``: ``run(handlers, messages, **queue_settings) -> PollerRun``
  sends the messages (``vip_worker.testing.make_message``) to a fresh queue with
  a dead-letter queue, runs the daemon's own poller (``Poller.open``, ``serve``,
  ``drain``, ``close``) over HTTP until every message has settled, and reports
  each outcome::

      def test_orders_flow(vip_worker_poller):
          run = vip_worker_poller({"orders": handle_order},
                                  [make_message("orders", {"sku": "A1"})])
          assert run.succeeded == [run.job_ids[0]]

Needs moto (``pip install 'moto[server]'``); the fixture is skipped without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import pytest

from vip_worker.sqs.local import LOCAL_AWS_ENV

OUTCOMES = ("message.retried", "message.dead_lettered")  # one record per message


@dataclass
class PollerRun:
    job_ids: list[str]
    succeeded: list[str] = field(default_factory=list)  # job ids, in completion order
    retried: list[str] = field(default_factory=list)  # one entry per retry
    dead_lettered: dict[str, str] = field(default_factory=dict)  # job id -> reason
    records: list[logging.LogRecord] = field(default_factory=list)


@pytest.fixture(scope="session")
def vip_worker_sqs_endpoint():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto[server] is not installed")
    saved = {k: os.environ.get(k) for k in LOCAL_AWS_ENV}
    os.environ.update(LOCAL_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def vip_worker_poller(vip_worker_sqs_endpoint, tmp_path):
    # The job store (ctx.store) goes under the test's own tmp_path, never ./var.
    state_dir = tmp_path / "vip-worker-state"

    def run(handlers, messages, *, plugin_settings=None, timeout_s: float = 30.0,
            **queue_settings) -> PollerRun:
        return run_through_poller(vip_worker_sqs_endpoint, handlers, messages,
                                  plugin_settings or {}, timeout_s, queue_settings,
                                  state_dir=str(state_dir))

    return run


def run_through_poller(endpoint, handlers, messages, plugin_settings, timeout_s,
                       queue_settings, state_dir: str) -> PollerRun:
    import json

    from vip_worker import config, liveness
    from vip_worker.logconfig import SUCCEEDED
    from vip_worker.plugins.manager import LoadedPlugins, make_plugin_manager
    from vip_worker.plugins.registry import HandlerRegistry
    from vip_worker.poller import Poller, StopMode
    from vip_worker.sqs.boto import connect
    from vip_worker.sqs.local import LOCAL_REGION
    from vip_worker.sqs.queues import queue_arn
    from vip_worker.store.factory import provide_store
    from vip_worker.testing import capture_logs

    client = connect(LOCAL_REGION, endpoint)
    name = f"test-{uuid.uuid4().hex[:10]}"
    dlq = client.create_queue(f"{name}-dlq")
    url = client.create_queue(name, {"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": queue_arn(client, dlq), "maxReceiveCount": "1000"})})
    env = {"VIP_WORKER_QUEUE_WORK_URL": url, "VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "1",
           "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_BASE_S": "0",
           "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_MAX_S": "0", "VIP_WORKER_METRICS_INTERVAL_S": "0",
           "VIP_WORKER_STATE_DIR": state_dir}
    for key, value in queue_settings.items():
        env[f"VIP_WORKER_QUEUE_WORK_{key.upper()}"] = str(value)
    settings = config.load(environ=env)
    registry = HandlerRegistry()
    for message_type, fn in handlers.items():
        registry.add("test", message_type, fn)
    registry.plugin_settings = {"test": plugin_settings}
    # No plugin is loaded: the handlers are the test's, and no poller hook runs.
    loaded = LoadedPlugins(manager=make_plugin_manager(), registry=registry, infos=[])
    for message in messages:
        client.send(url, message.to_body())
    result = PollerRun(job_ids=[m.job_id for m in messages])

    def settled() -> bool:
        done = {job_id for event, job_id, _ in _outcomes(collector.records)
                if event in ("message.succeeded", "message.dead_lettered")}
        return set(result.job_ids) <= done

    async def main():
        # The daemon's own poller, its four steps without the signal handlers.
        poller = Poller(settings, 0, [0.0] * liveness.SIZE, sqs_client=client,
                        providers=[provide_store], loaded=loaded)
        if not await poller.open():
            raise AssertionError("the poller could not start: see run.records")
        serving = asyncio.get_running_loop().create_task(poller.serve())
        deadline = time.monotonic() + timeout_s
        try:
            while not settled():
                if time.monotonic() > deadline:
                    raise AssertionError(f"messages not settled after {timeout_s}s")
                if serving.done():
                    raise AssertionError(f"the poller stopped ({poller.stop_mode}) before "
                                         f"every message settled")
                await asyncio.sleep(0.02)
        finally:
            # Everything asked for has settled: no grace period, no wait for the long poll.
            poller.request_stop(StopMode.FAST)
            await serving
            await poller.drain()
            await poller.close()

    with capture_logs("vip_worker") as collector:
        asyncio.run(main())
    result.records = collector.records
    for event, job_id, record in _outcomes(collector.records):
        if event == SUCCEEDED:
            result.succeeded.append(job_id)
        elif event == "message.retried":
            result.retried.append(job_id)
        elif event == "message.dead_lettered":
            result.dead_lettered[job_id] = record.error
    return result


def _outcomes(records) -> list[tuple[str, str, logging.LogRecord]]:
    """(event, job id, record) per message outcome, in order; a messages.succeeded record
    stands for one message.succeeded per message it lists."""
    from vip_worker.logconfig import SUCCEEDED, SUCCEEDED_BATCH

    found = []
    for record in list(records):
        event = record.getMessage()
        if event == SUCCEEDED_BATCH:
            found += [(SUCCEEDED, m["job_id"], record) for m in record.messages]
        elif event in OUTCOMES:
            found.append((event, record.job_id, record))
    return found
