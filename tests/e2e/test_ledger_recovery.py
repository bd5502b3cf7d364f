"""No job left behind, with the real daemon as processes and moto over HTTP:

- a message whose handler SIGKILLs its poller every time ends after ``max_attempts``
  poller deaths: the job failed with the reason, the message in the DLQ with it, and the
  daemon still serving other jobs;
- a job handed back at shutdown more often than the queue's ``maxReceiveCount`` still
  completes exactly once and never reaches the DLQ (the consumer re-sends it first).

The handlers are written to a plugin in the test's directory. Tests wait on log lines,
the job store and queue state; the ``start_daemon`` fixture kills every daemon it started.
"""

from __future__ import annotations

import json
import signal
import textwrap
import uuid

import pytest

from tests.support.sqs import envelope, queue_counts
from tests.support.wait import wait_until
from vip_worker import config
from vip_worker.store.factory import open_store

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

PLUGIN = """
import asyncio, os, signal
from datetime import UTC, datetime
from vip_worker import hookimpl

STARTS = {starts!r}
FINISH = {finish!r}


def record(ctx, message):
    with open(STARTS, "a") as fh:
        fh.write(f"{{message.job_id}} {{ctx.attempt}} {{os.getpid()}}\\n")


def die(message, ctx):
    record(ctx, message)
    os.kill(os.getpid(), signal.SIGKILL)  # the poison: the poller dies every time


def ok(message, ctx):
    record(ctx, message)


async def slow(message, ctx):
    record(ctx, message)
    while not os.path.exists(FINISH):  # runs until the test lets it finish
        await asyncio.sleep(0.05)
    ctx.store.save_result(message.job_id, "generated_content", {{"title": "done"}},
                          datetime.now(UTC))


@hookimpl
def vip_worker_register_handlers(register):
    register("die", die)
    register("ok", ok)
    register("slow", slow)
"""


@pytest.fixture
def recovery_plugin(tmp_path):
    """``(plugin dir, starts file, finish file)``: the starts file gets one
    ``<jobId> <attempt> <pid>`` line per handler start."""
    plugins, starts, finish = tmp_path / "plugins", tmp_path / "starts", tmp_path / "finish"
    plugins.mkdir()
    starts.touch()
    (plugins / "recoveryjobs.py").write_text(
        textwrap.dedent(PLUGIN.format(starts=str(starts), finish=str(finish))))
    return plugins, starts, finish


def starts_of(path, job_id):
    return [line.split() for line in path.read_text().splitlines() if line.startswith(job_id)]


def store_for(state):
    return open_store(config.load(environ={"VIP_WORKER_STATE_DIR": str(state)},
                                  require_queues=False))


def read_dlq(sqs, url):
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                              MessageAttributeNames=["All"]).get("Messages", [])
    return got


def test_a_message_that_kills_its_poller_every_time_is_dead_lettered_with_the_reason(
        sqs, make_queue, start_daemon, recovery_plugin, tmp_path):
    plugins, starts, _ = recovery_plugin
    max_attempts = 3
    # maxReceiveCount far above max_attempts: SQS must not move it silently first.
    urls = make_queue("poison", visibility_s=2, max_receives=50)
    state = tmp_path / "state"
    daemon = start_daemon(
        {"work": {"url": urls["url"], "wait_time_s": 1, "visibility_timeout_s": 2,
                  "max_attempts": max_attempts}},
        processes=2, plugin_dirs=[str(plugins)], plugins={}, state_dir=str(state),
        respawn_backoff_max_s=0.5, crash_loop_threshold=2, lifeline_interval_s=0,
        log_level="INFO")
    daemon.wait_for("poller.ready", count=2, timeout=60)
    poison = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(poison, "die", {}))
    store = store_for(state)
    try:
        reason = f"its poller died {max_attempts} times while running it"
        daemon.wait_for("message.dead_lettered", job_id=poison, timeout=90)
        job = store.get_job(poison)
        assert job["status"] == "failed" and job["error"] == reason, job
        assert len(starts_of(starts, poison)) == max_attempts, starts.read_text()
        (dead,) = wait_until(lambda: read_dlq(sqs, urls["dlq"]), 10, message="the DLQ copy")
        attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
        assert json.loads(dead["Body"])["jobId"] == poison
        assert reason in attrs["vip_error"], attrs
        # The daemon is still up and still serving: its master alive, a new job completes.
        assert daemon.proc.poll() is None
        other = uuid.uuid4().hex[:24]
        sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(other, "ok", {}))
        daemon.wait_until(lambda: (store.get_job(other) or {}).get("status") == "completed",
                          timeout=30, what="another job completed")
        daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (0, 0), timeout=15,
                          what="the queue empty")
        assert len(starts_of(starts, poison)) == max_attempts  # never run again
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit(timeout=30) == 0
    finally:
        store.close()


def test_a_job_handed_back_at_shutdown_more_often_than_max_receive_count_completes_once(
        sqs, make_queue, start_daemon, recovery_plugin, tmp_path):
    plugins, starts, finish = recovery_plugin
    hand_backs, max_receives = 4, 2
    urls = make_queue("handback", visibility_s=30, max_receives=max_receives)
    state = tmp_path / "state"
    queues = {"work": {"url": urls["url"], "wait_time_s": 1, "max_attempts": 10}}
    job_id = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job_id, "slow", {}))
    store = store_for(state)
    daemons = []

    def start():
        # A short grace period: the TERM hands the running job back (grace over).
        daemons.append(start_daemon(queues, processes=1, plugin_dirs=[str(plugins)], plugins={},
                            state_dir=str(state), grace_period_s=0.2, lifeline_interval_s=0,
                            log_level="INFO"))
        return daemons[-1]

    try:
        for n in range(1, hand_backs + 1):
            daemon = start()
            daemon.wait_until(lambda n=n: len(starts_of(starts, job_id)) == n, timeout=60,
                              what=f"handler start {n}")
            daemon.send(signal.SIGTERM)
            assert daemon.wait_exit(timeout=30) == 0
            assert store.get_job(job_id)["status"] == "queued"
        finish.touch()
        daemon = start()
        daemon.wait_until(lambda: store.get_job(job_id)["status"] == "completed", timeout=60,
                          what="the job completed")
        assert len(store.get_content("generated_content", job_id)) == 1
        assert len(starts_of(starts, job_id)) == hand_backs + 1
        daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (0, 0), timeout=15,
                          what="the queue empty")
        assert not read_dlq(sqs, urls["dlq"]), "the job's message reached the DLQ"
        # Each hand-back spends a receive: past maxReceiveCount only a re-send kept the
        # message from SQS's redrive.
        resent = sum(len(d.events("message.resent", job_id=job_id)) for d in daemons)
        print(f"hand-backs {hand_backs}, maxReceiveCount {max_receives}, re-sends {resent}")
        assert resent >= 1
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit(timeout=30) == 0
    finally:
        store.close()
