"""Nothing is lost: the real daemon under fault injection, checked by the ledger.

CI runs a short scenario (``ChaosConfig()``: 80 jobs over ~35 s of chaos); the
long one is ``bench/soak.py``. See docs/reliability.md for what each fault does
and the guarantee this test holds the daemon to.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime

import boto3
import pytest

from tests.chaos.scenario import (
    BUNDLED_PLUGINS,
    ChaosConfig,
    StoreLocker,
    run_scenario,
)
from tests.support.daemon import Daemon, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


def test_every_job_is_accounted_for_under_chaos(tmp_path, sqs_endpoint):
    """Pollers SIGKILLed every 2-4 s, one TERM and restart, ~20 % of generation calls
    failing, a 4 s visibility timeout and a maxReceiveCount (3) below max_attempts (6),
    the lifeline sweeping every 2 s: every job ends completed (one content document) or
    failed with its reason and its message in the DLQ; none stuck, lost or duplicated."""
    config = ChaosConfig()
    assert config.max_receive_count <= config.max_attempts
    report, run = run_scenario(config, tmp_path, sqs_endpoint)
    print(json.dumps(report.summary(), indent=1, default=str))
    print("\n".join(run.chaos_log))
    print_recovery(report)
    assert report.ok, report.explain()
    assert report.completed + report.failed == report.jobs
    assert run.exit_code == 0, "the final TERM did not stop the daemon cleanly"
    # The chaos really happened (a run where nothing was injected proves nothing).
    assert run.chaos["pollers_killed"] >= 2 and run.chaos["daemon_restarts"] == 1
    # The store outage reached the daemon: a handler retried on it (or, holding a paid-for
    # generation, retried its checkpoint write), or (the ledger's own writes) a settle, a
    # lease renewal or a progress batch failed on it.
    assert report.faults["store_outages_s"] and any(report.events.get(name) for name in (
        "retried:StoreUnavailable", "job.checkpoint_retry", "job.checkpoint_failed",
        "job.settle_failed", "job.lease_renew_failed", "job.progress_failed")), report.events
    assert sum(report.faults["sqs"].values()) > 0
    assert report.events.get("receive.failed"), "the SQS brownout never reached the daemon"
    assert sum(report.faults["generation"].values()) > 0
    # Payloads that can never succeed ended failed, with their reason in the DLQ.
    invalid = [s for s in run.specs if s.expect == "failed"]
    assert invalid and not {s.job_id for s in invalid} & set(report.problem_jobs)
    # Never paid twice once checkpointed: no completed job was generated again after a
    # generation of it was checkpointed (a retry saved the checkpoint instead). Jobs
    # generated twice for want of a checkpoint (a poller killed, or the store locked,
    # between the answer and its checkpoint) are a figure (not_exactly_one, uncheckpointed).
    generations = report.generations_per_completed_job
    assert not generations["after_checkpoint"], report.explain()
    assert len(generations["not_exactly_one"]) <= generations["uncheckpointed"]


def print_recovery(report) -> None:
    """The figures the run measured (printed, not asserted: timing on a shared machine)."""
    print(f"recovery after a poller's SIGKILL: {json.dumps(report.recovery)}")
    print(f"rescues (job.rescued): {report.events.get('job.rescued', 0)}, re-sends "
          f"(message.resent): {report.events.get('message.resent', 0)}, leases lost: "
          f"{report.events.get('job.lease_lost', 0)}, DLQ copies moved by SQS's redrive "
          f"(no reason): {report.redriven_by_sqs}")
    print(f"job-document writes per job: {json.dumps(report.store_writes)}")
    print(f"generation calls per job: {json.dumps(report.generation_calls)}")
    print(f"generations per completed job: {json.dumps(report.generations_per_completed_job)}")


@pytest.fixture
def one_poller(tmp_path, sqs_endpoint):
    """The articles plugin on one queue, one poller, max_attempts=1: every failure is
    the last attempt. Yields (daemon, sqs client, urls, config path, store path)."""
    from vip_worker.dev.stubservice import StubGenerationService

    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")
    dlq = sqs.create_queue(QueueName=f"last-{time.time_ns()}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=f"last-{time.time_ns()}", Attributes={
        "VisibilityTimeout": "4", "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": arn, "maxReceiveCount": "50"})})["QueueUrl"]
    stub = StubGenerationService().start()
    state = tmp_path / "state"
    path = write_config(
        tmp_path / "vip-worker.toml",
        {"articles": {"url": url, "wait_time_s": 1, "visibility_timeout_s": 4,
                      "max_attempts": 1, "retry_backoff_base_s": 1,
                      "retry_backoff_max_s": 1}},
        processes=1, log_level="INFO", metrics_interval_s=0,
        plugin_dirs=[str(BUNDLED_PLUGINS)], state_dir=str(state), fastapi_url=stub.url)
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d", path, sqs_endpoint)
    try:
        daemon.wait_for("poller.ready", timeout=60)
        yield daemon, sqs, {"url": url, "dlq": dlq}, path, state / "jobs.sqlite3"
    finally:
        daemon.kill()
        stub.stop()


def test_store_outage_on_the_last_attempt_is_retried_not_dead_lettered(one_poller):
    from vip_worker import config
    from vip_worker.pipeline.producer import Producer

    daemon, sqs, urls, config_path, store_path = one_poller
    store = Producer(config.load(str(config_path), environ={})).store
    job = "0123456789abcdef01234567"
    store.create_job(job, "u1", "articles", {"topic": "t"}, datetime.now(UTC))
    locker = StoreLocker(store_path)
    # Longer than two of SQLite's 10 s busy timeouts: a poller's store calls share one
    # connection, so the claim can first wait behind another write that meets the lock
    # (poller 0's fleet report at start) before its own wait runs out: StoreUnavailable.
    locker.hold(24)
    assert locker.holding.is_set(), "the store lock was not taken"  # hold() returns once held
    body = json.dumps({"jobId": job, "userId": "u1", "type": "articles",
                       "timestamp": "2025-01-15T10:30:00Z",
                       "payload": {"mode": "topic", "topic": "store outage"}})
    sqs.send_message(QueueUrl=urls["url"], MessageBody=body)
    try:
        outcome = daemon.wait_until(
            lambda: daemon.events("message.dead_lettered", job_id=job)
            or daemon.events("message.retried", job_id=job), timeout=45, what="an outcome")
    finally:
        locker.close()
    assert outcome[0]["event"] == "message.retried", (
        f"dead-lettered during a store outage: {outcome[0]}; job left "
        f"{store.get_job(job)['status']}")
    daemon.wait_for("message.succeeded", job_id=job, timeout=30)
    assert store.get_job(job)["status"] == "completed"
    daemon.send(signal.SIGTERM)


def test_a_concurrent_twin_delivery_cannot_requeue_a_dead_lettered_job(tmp_path):
    """Two deliveries of one message run at once: X gets garbage (PermanentError: the job
    is failed, the message dead-lettered and deleted), Y a 503 (transient: requeue, then a
    retry that can no longer find the deleted message). The job must end failed."""
    import logging
    import threading

    from vip_worker import pipeline
    from vip_worker.errors import PermanentError
    from vip_worker.message import Envelope
    from vip_worker.plugins.context import HandlerContext, PollerContext
    from vip_worker.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "jobs.sqlite3")
    job = "0123456789abcdef01234567"
    store.create_job(job, "u1", "articles", {}, datetime.now(UTC))
    poller = PollerContext(index=0, settings=None)
    poller.provide("store", lambda: store)
    message = Envelope(job, "u1", "articles", "2025-01-15T10:30:00Z", {"topic": "t"})
    x_generating, y_claimed, x_done = threading.Event(), threading.Event(), threading.Event()

    def ctx():
        return HandlerContext(message_id="m-1", job_id=job, queue="articles",
                              receive_count=1, max_attempts=5,
                              deadline=time.monotonic() + 60,
                              log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                              resources={}, plugin_settings={}, poller=poller)

    def garbage():
        x_generating.set()
        y_claimed.wait(5)
        raise PermanentError("generation service returned a non-JSON response")

    def overloaded():
        y_claimed.set()
        x_done.wait(5)
        raise RuntimeError("HTTP 503 model overloaded")

    def run_x():
        try:
            pipeline.run_job(message, ctx(), garbage, "generated_content")
        except PermanentError:
            pass  # the consumer dead-letters the message and deletes it
        finally:
            x_done.set()

    def run_y():
        x_generating.wait(5)
        try:
            pipeline.run_job(message, ctx(), overloaded, "generated_content")
        except RuntimeError:
            pass  # the consumer's retry finds the message deleted: nothing is left

    threads = [threading.Thread(target=run_x), threading.Thread(target=run_y)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert store.get_job(job)["status"] == "failed"
