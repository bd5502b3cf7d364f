"""Checkpoints in the bundled plugins, against the stub generation service: a generation
that succeeded is never paid for twice. A store that fails ``save_result`` once (right
after the generation call) makes the attempt fail; the retry saves the checkpointed
content without a second call, and the job completes. On every store backend."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from vip_worker import config
from vip_worker.message import Envelope
from vip_worker.pipeline.runner import GENERATED, close_generation_client
from vip_worker.plugins import load_plugins
from vip_worker.plugins.context import PollerContext
from vip_worker.store import StoreUnavailable
from vip_worker.testing import capture_logs, run_handler

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


class FailsSaveOnce:
    """A job store whose first ``save_result`` fails as an outage would."""

    def __init__(self, store) -> None:
        self._store = store
        self.failed = 0

    def save_result(self, *args, **kwargs):
        if not self.failed:
            self.failed += 1
            raise StoreUnavailable("injected: the store went away after the generation")
        return self._store.save_result(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def bundled(generation):
    """(settings, registry) of the bundled plugins, pointed at the stub service."""
    settings = config.load(None, environ={"FASTAPI_URL": generation.url,
                                          "VIP_WORKER_PLUGIN_DIRS": str(PLUGINS)},
                           require_queues=False)
    return settings, load_plugins(settings).registry


def envelope(job_id: str, type: str, payload: dict) -> Envelope:
    return Envelope(job_id=job_id, user_id="u1", type=type, timestamp="", payload=payload)


@pytest.mark.parametrize("type, payload, collection", [
    ("articles", {"mode": "topic", "topic": "tea", "wordCount": 120}, "generated_content"),
    ("images", {"prompt": "a teapot"}, "media"),
])
def test_a_store_failure_after_the_generation_costs_no_second_call(
        bundled, generation, store, type, payload, collection):
    settings, registry = bundled
    handler = registry.get(type).fn
    flaky = FailsSaveOnce(store)
    resources: dict = {}  # one poller: one generation client for both attempts
    message = envelope("job-1", type, payload)
    first = run_handler(handler, message, settings=settings, store=flaky,
                        resources=resources, receive_count=1)
    assert first.kind == "retried" and flaky.failed == 1
    assert generation.calls_by_job == {"job-1": 1}
    assert store.get_job("job-1")["status"] == "processing"  # the outage left it held
    assert GENERATED in store.get_job("job-1")["checkpoints"]

    with capture_logs("vip_worker_plugins") as lines:
        second = run_handler(handler, message, settings=settings, store=flaky,
                             resources=resources, receive_count=2)
    close_generation_client(PollerContext(0, settings, resources))
    assert second.kind == "succeeded", second.error
    assert generation.calls_by_job == {"job-1": 1}  # no second generation call
    assert lines.events("job.checkpoint_used")
    job = store.get_job("job-1")
    assert job["status"] == "completed"
    saved = store.get_content(collection, "job-1")
    assert len(saved) == 1
    assert {k: v for k, v in saved[0].items() if k in job["checkpoints"][GENERATED]} == \
        {k: v for k, v in job["checkpoints"][GENERATED].items()
         if k not in ("_id", "createdAt")}


def test_without_a_checkpoint_a_retry_calls_again(bundled, generation, store):
    """The control: a generation that failed (503) leaves no checkpoint, so the retry
    calls the service again (the count above is not vacuous)."""
    settings, registry = bundled
    handler = registry.get("articles").fn
    resources: dict = {}
    message = envelope("job-2", "articles", {"topic": "tea", "wordCount": 50})
    generation.failure_rate = 1.0
    first = run_handler(handler, message, settings=settings, store=store,
                        resources=resources)
    assert first.kind == "retried"
    assert not store.get_job("job-2").get("checkpoints")
    generation.failure_rate = 0.0
    second = run_handler(handler, message, settings=settings, store=store,
                         resources=resources, receive_count=2)
    close_generation_client(PollerContext(0, settings, resources))
    assert second.kind == "succeeded", second.error
    assert generation.calls_by_job == {"job-2": 2}


class StoreDown:
    """A job store whose checkpoint writes fail (an outage at that moment)."""

    def __init__(self, store) -> None:
        self._store = store

    def checkpoint(self, *args, **kwargs):
        raise StoreUnavailable("injected: the store is locked")

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_result_the_store_could_not_checkpoint_is_kept_on_disk_for_the_next_attempt(
        tmp_path, store):
    """The store is down when the checkpoint is written and the poller dies before it is
    back (here: the attempt gives up at once, its job time spent): the next attempt on
    this host saves the result kept under state_dir instead of generating again."""
    from vip_worker.pipeline import spill
    from vip_worker.pipeline.runner import run_job
    from vip_worker.plugins.context import STORE, HandlerContext

    settings = type("S", (), {"state_dir": str(tmp_path / "state")})()
    calls: list[int] = []

    def generate():
        calls.append(1)
        return {"title": "T", "content": "paid for once"}

    def attempt(job_store, max_job_time_s):
        poller = PollerContext(index=0, settings=settings)
        poller.provide(STORE, lambda: job_store)
        ctx = HandlerContext.for_message(
            poller, plugin="articles", message_id="m1", job_id="job-9", queue="q",
            receive_count=1, max_attempts=5, max_job_time_s=max_job_time_s, log_fields={})
        run_job(envelope("job-9", "articles", {"topic": "t"}), ctx, generate,
                "generated_content")
        return ctx

    with capture_logs("vip_worker_plugins") as first:
        ctx = attempt(StoreDown(store), max_job_time_s=0.5)  # no time to retry: saved anyway
    assert first.events("job.checkpoint_spilled") and first.events("job.checkpoint_failed")
    # That save went through (the outage hit the checkpoint only), so the file is gone.
    assert not spill.path_of(ctx, "job-9").exists()

    # Again, the save failing too (as the whole store would): the file stays.
    store.create_job("job-10", "u1", "articles", {}, datetime.now(UTC))

    class AllDown(StoreDown):
        def save_result(self, *args, **kwargs):
            raise StoreUnavailable("injected: still locked")

    poller = PollerContext(index=0, settings=settings)
    poller.provide(STORE, lambda: AllDown(store))
    ctx = HandlerContext.for_message(
        poller, plugin="articles", message_id="m2", job_id="job-10", queue="q",
        receive_count=1, max_attempts=5, max_job_time_s=0.5, log_fields={})
    with pytest.raises(StoreUnavailable):
        run_job(envelope("job-10", "articles", {"topic": "t"}), ctx, generate,
                "generated_content")
    assert spill.path_of(ctx, "job-10").exists() and len(calls) == 2
    # The poller died; the store is back; the next attempt uses the file.
    poller = PollerContext(index=0, settings=settings)
    poller.provide(STORE, lambda: store)
    ctx = HandlerContext.for_message(
        poller, plugin="articles", message_id="m2", job_id="job-10", queue="q",
        receive_count=2, max_attempts=5, max_job_time_s=60, log_fields={})
    with capture_logs("vip_worker_plugins") as second:
        run_job(envelope("job-10", "articles", {"topic": "t"}), ctx, generate,
                "generated_content")
    assert len(calls) == 2  # no third generation
    (used,) = second.events("job.checkpoint_used")
    assert used.source == "disk"
    assert store.get_job("job-10")["status"] == "completed"
    assert store.get_content("generated_content", "job-10")[0]["content"] == "paid for once"
    assert not spill.path_of(ctx, "job-10").exists()
