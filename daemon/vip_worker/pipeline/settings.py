"""The generation service's settings, declared here and found by ``vip_worker.config``
through the ``vip_worker.settings`` entry point ``pipeline`` (setup.cfg), as a plugin is
found.

They are read like every other top-level setting: from the config file, then
``VIP_WORKER_<NAME>``, and ``FASTAPI_URL`` as the app names it.
"""

from __future__ import annotations

import json
from typing import Any

from vip_worker.config import Setting, boolean, choice, number, str_list, string, url
from vip_worker.pipeline.usage import budget_table, price_table
from vip_worker.sqs.limits import MAX_VISIBILITY_S


def quotas(value: Any) -> dict[str, dict[str, Any]]:
    """``{"generation": {"rpm": 60, "tpm": 100000, "concurrency": 4}}`` in TOML (a table of
    tables), or the same as JSON in the environment; each table checked here."""
    from vip_worker.pipeline.quota import parse_limits

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"must be a JSON object of provider tables: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ValueError(f"must be a table of provider tables, got {value!r}")
    for provider, table in value.items():
        parse_limits(table, str(provider))
    return {str(p): dict(t) for p, t in value.items()}


quotas.kind = "table of provider tables (JSON in the environment)"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "fastapi_url", "http://127.0.0.1:8000", url,
        "Base URL of the generation service (the FastAPI app).", env=("FASTAPI_URL",),
    ),
    Setting("article_path", "/api/generation/{mode}", string,
            "Path of the article endpoint; {mode} is the payload's mode."),
    Setting("image_path", "/api/generation/image", string, "Path of the image endpoint."),
    Setting("article_modes", ["topic", "keywords", "trends", "spin"], str_list,
            "Generation modes a message may ask for (anything else is refused)."),
    Setting("generation_connect_timeout_s", 5.0, number(0.1, 300),
            "Connect timeout of generation calls."),
    Setting(
        "generation_read_timeout_s", 900.0, number(1, MAX_VISIBILITY_S),
        "Read timeout of generation calls (clipped to the queue's max_job_time_s).",
    ),
    Setting(
        "quotas", {}, quotas,
        "Fleet-wide limits per provider ('generation', or a model's name): rpm, tpm, "
        "concurrency, user_max_inflight, lease_s, breaker_failures, breaker_cooldown_s, "
        "breaker_probes, fair_wait_s. A provider without a table is unlimited.",
    ),
    Setting("quota_tokens_per_word", 1.5, number(0, 100),
            "Tokens estimated per word asked for (wordCount) before a generation call."),
    Setting(
        "fair_message_groups", False, boolean,
        "The producer sends the userId as MessageGroupId on standard queues (SQS fair "
        "queues).",
    ),
    Setting(
        "generation_stream", "auto", choice("auto", "ndjson", "sse", "off"),
        "Ask the generation service to stream its answer: auto (NDJSON or SSE, whichever "
        "it sends), ndjson, sse, or off (one JSON answer); progress then follows the words.",
    ),
    Setting(
        "progress_interval_s", 3.0, number(0.5, 300),
        "Shortest time between two progress writes of one job (streamed or estimated).",
    ),
    Setting(
        "prices", {}, price_table,
        "Price per model: [prices.<model>] in_per_1k, out_per_1k (per 1,000 tokens in and "
        "out), per_image; turns a job's usage into its cost.",
    ),
    Setting(
        "user_daily_budget", 0.0, number(0, 1e12),
        "Money one user may spend per UTC day on generations (0: no budget).",
    ),
    Setting(
        "user_budgets", {}, budget_table,
        "Per-user daily budgets overriding user_daily_budget (a table user = amount).",
    ),
    Setting(
        "budget_outcome", "defer", choice("defer", "fail"),
        "A job of a user over budget: defer (until the next UTC day, no attempt spent) or "
        "fail (with the reason \"budget exceeded\").",
    ),
)
