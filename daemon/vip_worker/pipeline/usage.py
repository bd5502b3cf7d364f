"""Usage and cost of a generation, and the users' daily budget.

The generation service may report what a call used, in its response's ``usage`` object
(the stub service does; camelCase or snake_case, OpenAI's names accepted too)::

    {"usage": {"promptTokens": 42, "completionTokens": 1330, "images": 0,
               "model": "stub-writer-1"}}

``job_usage`` turns it into the job's ``usage`` (the same on its content document)::

    {"tokensIn": 42, "tokensOut": 1330, "images": 0, "model": "stub-writer-1",
     "cost": 0.020076}

``cost`` comes from the ``prices`` setting, per model: ``in_per_1k`` and ``out_per_1k``
(money per 1,000 tokens in and out) and ``per_image``; a model with no price has
``cost`` null (counted nowhere, logged ``usage.unpriced``).

The daily budget (``user_daily_budget``, overridden per user by ``user_budgets``; 0: no
budget) is checked before a generation call: a user whose spending today (UTC, kept in
the store by ``add_spend``, one atomic increment per completed job) has reached it gets
``budget_outcome``: ``defer`` (``Deferred("budget exceeded")`` until the next UTC day;
the consumer hands the message back without spending an attempt) or ``fail`` (the job
fails with "budget exceeded").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

BUDGET_EXCEEDED = "budget exceeded"
TOKENS_IN = ("promptTokens", "prompt_tokens", "inputTokens", "input_tokens", "tokensIn")
TOKENS_OUT = ("completionTokens", "completion_tokens", "outputTokens", "output_tokens",
              "tokensOut")
PRICE_KEYS = ("in_per_1k", "out_per_1k", "per_image")


def first_number(doc: Mapping[str, Any], names: tuple[str, ...]) -> int:
    for name in names:
        value = doc.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0:
            return int(value)
    return 0


def job_usage(result: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]]
              ) -> dict[str, Any] | None:
    """The job's ``usage`` from a generation result, or None when it reports none."""
    reported = result.get("usage")
    if not isinstance(reported, Mapping):
        return None
    images = first_number(reported, ("images", "imageCount", "image_count"))
    model = reported.get("model") or result.get("model")
    usage = {"tokensIn": first_number(reported, TOKENS_IN),
             "tokensOut": first_number(reported, TOKENS_OUT),
             "images": images, "model": str(model) if model else None}
    usage["cost"] = cost_of(usage, prices)
    return usage


def cost_of(usage: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]]
            ) -> float | None:
    """The money ``usage`` costs by the price table; None: its model has no price."""
    price = prices.get(usage.get("model") or "")
    if price is None:
        return None
    total = (usage.get("tokensIn", 0) / 1000 * price.get("in_per_1k", 0.0)
             + usage.get("tokensOut", 0) / 1000 * price.get("out_per_1k", 0.0)
             + usage.get("images", 0) * price.get("per_image", 0.0))
    return round(total, 6)


def daily_budget(settings: Any, user_id: str) -> float:
    """The user's daily budget: ``user_budgets[user]``, else ``user_daily_budget``;
    0 (or no settings): none."""
    overrides = getattr(settings, "user_budgets", None) or {}
    if user_id in overrides:
        return float(overrides[user_id])
    return float(getattr(settings, "user_daily_budget", 0) or 0)


def until_next_day_s(now: datetime) -> float:
    """Seconds from ``now`` (aware UTC) to the next UTC midnight (at least 1)."""
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (midnight - now).total_seconds())


# -- the settings' parsers (pipeline/settings.py declares the settings) -----------------


def price_table(value: Any) -> dict[str, dict[str, float]]:
    """``[prices.<model>]`` tables of ``in_per_1k``, ``out_per_1k``, ``per_image`` (each
    >= 0, missing: 0); in the environment, the same as JSON."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"must be JSON in the environment: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of model = {{in_per_1k, out_per_1k, per_image}}, "
                         f"got {value!r}")
    table = {}
    for model, price in value.items():
        if not isinstance(price, dict):
            raise ValueError(f"{model}: must be a table, got {price!r}")
        unknown = set(price) - set(PRICE_KEYS)
        if unknown:
            raise ValueError(f"{model}: unknown key {sorted(unknown)[0]!r} "
                             f"(known: {', '.join(PRICE_KEYS)})")
        table[str(model)] = {key: money(f"{model}.{key}", price.get(key, 0.0))
                             for key in PRICE_KEYS}
    return table


price_table.kind = "table of model tables (JSON in the environment)"


def budget_table(value: Any) -> dict[str, float]:
    """``{"user-1": 5.0}`` in TOML, or ``user-1=5.0,user-2=0`` in the environment."""
    if isinstance(value, str):
        pairs = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, amount = part.partition("=")
            if not sep:
                raise ValueError(f"expected USER=AMOUNT pairs, got {part!r}")
            pairs[name.strip()] = amount.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of user = amount, got {value!r}")
    return {str(user): money(str(user), amount) for user, amount in value.items()}


budget_table.kind = "table USER = AMOUNT (USER=AMOUNT,... in the environment)"


def money(where: str, value: Any) -> float:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a number, got {value!r}") from None
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{where}: must be a number >= 0, got {value!r}")
    return amount
