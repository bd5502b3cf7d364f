"""A deferral on an untracked queue (``track_jobs = false``: ``run_job`` claims the job
itself, ``ctx.delivery`` is None): the job goes back to ``queued`` with its attempt
refunded and a ``deferred`` entry, never left ``processing`` nor charged an attempt."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from vip_worker import config
from vip_worker.errors import Deferred
from vip_worker.message import Envelope
from vip_worker.pipeline.runner import close_generation_client, run_job
from vip_worker.plugins import load_plugins
from vip_worker.plugins.context import PollerContext
from vip_worker.testing import run_handler

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def envelope(job_id: str, payload: dict) -> Envelope:
    return Envelope(job_id=job_id, user_id="u1", type="articles", timestamp="",
                    payload=payload)


def assert_released(job: dict, reason: str) -> None:
    assert (job["status"], job["attempts"]) == ("queued", 0)
    last = job["history"][-1]
    assert (last["event"], last.get("reason")) == ("deferred", reason)


def test_a_deferral_in_generate_releases_the_job(store):
    def generate():
        raise Deferred("quota:generation:rpm", 12.0)

    outcome = run_handler(lambda message, ctx: run_job(message, ctx, generate, "content"),
                          envelope("q1", {"topic": "t"}), store=store)
    assert outcome.kind == "deferred", outcome
    assert_released(store.get_job("q1"), "quota:generation:rpm")


def test_an_over_budget_deferral_releases_the_job(generation, store):
    settings = config.load(None, environ={
        "FASTAPI_URL": generation.url, "VIP_WORKER_PLUGIN_DIRS": str(PLUGINS),
        "VIP_WORKER_USER_DAILY_BUDGET": "1.0",
        "VIP_WORKER_PRICES": json.dumps({"stub-writer-1": {"in_per_1k": 1}})},
        require_queues=False)
    registry = load_plugins(settings).registry
    now = datetime.now(UTC)
    store.add_spend("u1", now.date(), 2.0, now)
    resources: dict = {}
    try:
        outcome = run_handler(registry.get("articles").fn, envelope("b1", {"topic": "t"}),
                              settings=settings, store=store, resources=resources)
    finally:
        close_generation_client(PollerContext(0, settings, resources))
    assert outcome.kind == "deferred", outcome
    assert_released(store.get_job("b1"), "budget exceeded")
    assert generation.calls_by_job == {}
