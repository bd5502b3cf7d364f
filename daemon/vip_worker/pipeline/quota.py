"""The quota governor's client side: ``ctx.quota(provider, tokens=...)``.

A handler (or the bundled plugins' generation call, ``gated_call``) asks for a permit
before it calls a provider::

    with ctx.quota("generation", tokens=estimate) as permit:
        result = client.article(payload)
        permit.used(result_tokens)        # optional: the service's reported usage

- No limits configured for the provider (``quotas`` setting): the permit is free, no
  store call at all.
- Granted: one store round trip (``store.acquire_permit``); after the block, one more
  (``store.report_call``) releases the permit, corrects the token estimate, and tells the
  breaker how the call went.
- Refused (budget spent, the provider paused or its breaker open, the user's cap, a
  fairer user first): ``Deferred`` with the time the budget refills; the consumer
  releases the job (no attempt spent) and the message comes back after it, plus jitter.
- A call that ends in a 429, or a 503 with Retry-After, pauses the provider for the whole
  fleet (the store's record) and is itself deferred; a pause seen once is remembered in
  this process (``paused``) so the next asks until it ends cost no round trip.

The breaker and the pause live in the same record as the budget, so they cost no extra
round trip: the acquire reads them. Provided as the poller's ``quota`` resource
(``provide_quota``), like the store.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from vip_worker.errors import Deferred, DependencyUnavailable
from vip_worker.plugins.context import QUOTA
from vip_worker.store.quota import ERROR, OK, OTHER, THROTTLED, Grant, QuotaLimits

log = logging.getLogger("vip_worker.quota")
DEFAULT_PROVIDER = "generation"
# Statuses that mean "the provider is overloaded or limiting us": a pause, not a failure.
THROTTLE_STATUSES = frozenset({429, 503})
# Without a Retry-After, a 429 pauses the provider this long.
THROTTLE_DEFAULT_S = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def outcome_of(error: BaseException | None) -> tuple[str, float | None]:
    """How a call went, for the breaker and the pause: (outcome, Retry-After seconds).

    Duck-typed on the error's ``status`` and ``delay_s`` (``GenerationUnavailable`` has
    both; a user plugin's error may too): a 429, or a 503 with Retry-After, is
    ``throttled``; a 5xx, no answer at all (``status`` None on an unavailable error) or a
    2xx stream that broke midway (an ``{"error"}`` event, cut at the deadline) is an
    ``error``; anything else (a 4xx, a bad payload) says nothing of the provider.
    """
    if error is None:
        return OK, None
    status = getattr(error, "status", None)
    delay_s = getattr(error, "delay_s", None)
    if status == 429 or (status == 503 and delay_s is not None):
        return THROTTLED, delay_s if delay_s is not None else THROTTLE_DEFAULT_S
    if (status is not None and (status >= 500 or 200 <= status < 300)) or (
            status is None and hasattr(error, "status")):
        return ERROR, None  # a 2xx that failed: the stream broke midway (an {"error"})
    return OTHER, None


class Permit:
    """A granted call (a context manager): ``used(tokens)`` records the real usage; on
    exit the permit is reported, and a throttled call becomes ``Deferred``."""

    def __init__(self, governor: Governor | None, provider: str, permit: str,
                 tokens: int) -> None:
        self.governor = governor
        self.provider = provider
        self.permit = permit
        self.tokens = tokens
        self.actual: int | None = None

    def used(self, tokens: int | None) -> None:
        """The tokens the call really used (the service's usage), when it said."""
        if tokens is not None:
            self.actual = int(tokens)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.governor is None:
            return None
        outcome, retry_after_s = outcome_of(exc)
        self.governor.report(self, outcome, retry_after_s)
        if outcome == THROTTLED and not isinstance(exc, Deferred):
            raise Deferred(f"provider_paused:{self.provider}", retry_after_s or 0.0) from exc
        return None


class Governor:
    """One poller's client of the shared quota records.

    :param store: returns the job store (opened on first use).
    :param limits: each provider's ``QuotaLimits``; a provider absent is unlimited.
    :param clock: the wall clock (UTC) the record's times are written in.
    """

    def __init__(self, store: Callable[[], Any], limits: Mapping[str, QuotaLimits],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.limits = dict(limits)
        self.clock = clock
        self.paused: dict[str, datetime] = {}  # provider -> pause end, as last seen
        self.acquires = 0  # store round trips spent on acquires (the benchmark reads it)

    def permit(self, provider: str = DEFAULT_PROVIDER, *, tokens: int = 0, user: str = "",
               job_id: str | None = None, lease_s: float | None = None) -> Permit:
        """A permit to call ``provider`` now, or ``Deferred`` (see the module docstring).

        :param lease_s: the permit's lease when shorter than the provider's ``lease_s``
            (``ctx.quota`` passes the job's time left): a permit whose poller died frees
            its place when the call could not be running any more.

        :raises Deferred: not now; ``delay_s`` is until the budget refills.
        :raises DependencyUnavailable: the store is down (the message is retried).
        """
        limits = self.limits.get(provider)
        if limits is None:
            return Permit(None, provider, "", tokens)
        if lease_s is not None:
            limits = replace(limits, lease_s=max(1.0, min(limits.lease_s, lease_s)))
        now = self.clock()
        paused = self.paused.get(provider)
        if paused is not None and paused > now:
            raise self.deferred(provider, "paused", paused, now, job_id, user)
        permit = uuid.uuid4().hex
        self.acquires += 1
        grant: Grant = self.store().acquire_permit(provider, permit, now, user=user,
                                                   tokens=max(0, int(tokens)), limits=limits)
        if grant.paused_until is not None:
            self.paused[provider] = grant.paused_until
        if not grant.ok:
            raise self.deferred(provider, grant.reason or "refused", grant.retry_at, now,
                                job_id, user)
        return Permit(self, provider, permit, tokens)

    def deferred(self, provider: str, reason: str, retry_at: datetime | None, now: datetime,
                 job_id: str | None, user: str) -> Deferred:
        delay_s = max(0.0, (retry_at - now).total_seconds()) if retry_at else 1.0
        log.info("quota.deferred", extra={"provider": provider, "reason": reason,
                                          "delay_s": round(delay_s, 3), "job_id": job_id,
                                          "user_id": user})
        prefix = "provider_paused" if reason == "paused" else "quota"
        tag = f"{prefix}:{provider}" if reason == "paused" else f"{prefix}:{provider}:{reason}"
        return Deferred(tag, math.ceil(delay_s * 1000) / 1000)

    def report(self, permit: Permit, outcome: str, retry_after_s: float | None) -> None:
        """The call ended: one store write (see ``store.report_call``). A store outage
        here is logged, never raised: the call's result must not be lost (and paid for
        again) for it; the permit's lease runs out on its own."""
        limits = self.limits[permit.provider]
        now = self.clock()
        tokens = permit.actual
        try:
            self.store().report_call(permit.provider, permit.permit, now, outcome=outcome,
                                     tokens=tokens, retry_after_s=retry_after_s,
                                     limits=limits)
        except DependencyUnavailable as exc:
            log.error("quota.report_failed", extra={
                "provider": permit.provider, "outcome": outcome, "error": str(exc)[:500]})
        if outcome == THROTTLED:
            until = now.timestamp() + (retry_after_s or 0.0)
            self.paused[permit.provider] = datetime.fromtimestamp(until, UTC)
            log.warning("quota.paused", extra={"provider": permit.provider,
                                               "retry_after_s": retry_after_s})
        elif outcome == ERROR:
            log.info("quota.call_failed", extra={"provider": permit.provider})


# -- settings -> limits, and the poller's resource ----------------------------------------

LIMIT_KEYS = {"rpm": int, "tpm": int, "concurrency": int, "user_max_inflight": int,
              "lease_s": float, "breaker_failures": int, "breaker_cooldown_s": float,
              "breaker_probes": int, "fair_wait_s": float}


def parse_limits(table: Mapping[str, Any], where: str) -> QuotaLimits:
    """One provider's table of the ``quotas`` setting; ValueError names the bad key."""
    values = {}
    for key, value in table.items():
        kind = LIMIT_KEYS.get(key)
        if kind is None:
            raise ValueError(f"{where}.{key}: unknown limit (known: {', '.join(LIMIT_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}.{key}: must be a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{where}.{key}: must be a number, got {value!r}") from None
        if number < 0:
            raise ValueError(f"{where}.{key}: must be 0 or more, got {value!r}")
        values[key] = number
    return QuotaLimits(**values)


def limits_from_settings(settings: Any) -> dict[str, QuotaLimits]:
    """The ``quotas`` setting (checked when read) as ``QuotaLimits`` by provider."""
    tables = getattr(settings, "quotas", None) or {}
    return {provider: parse_limits(table, f"quotas.{provider}")
            for provider, table in tables.items()}


def provide_quota(context: Any) -> None:
    """Register the poller's governor as its ``quota`` resource (``ctx.quota``)."""
    context.provide(QUOTA, lambda: Governor(lambda: context.store,
                                            limits_from_settings(context.settings)))


def estimate_tokens(payload: Mapping[str, Any], tokens_per_word: float) -> int:
    """A generation call's tokens before it is made: the words asked for (``wordCount``,
    default 800) times ``tokens_per_word``, plus the request's own text (4 characters a
    token)."""
    words = payload.get("wordCount") if isinstance(payload, Mapping) else None
    if not isinstance(words, (int, float)) or isinstance(words, bool) or words <= 0:
        words = 800
    prompt = sum(len(v) for v in payload.values() if isinstance(v, str)) \
        if isinstance(payload, Mapping) else 0
    return int(words * tokens_per_word + prompt / 4)


def reported_tokens(result: Any) -> int | None:
    """The tokens a service's answer reports (``usage``: total, or in + out), or None."""
    usage = result.get("usage") if isinstance(result, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    for key in ("total_tokens", "totalTokens"):
        if isinstance(usage.get(key), int):
            return usage[key]
    parts = [usage.get(k) for k in ("tokens_in", "tokens_out", "tokensIn", "tokensOut",
                                    "prompt_tokens", "completion_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


def provider_for(payload: Mapping[str, Any], limits: Mapping[str, QuotaLimits]) -> str:
    """The payload's ``model`` when the ``quotas`` setting has a table for it, else
    ``generation``: a model with limits of its own is governed by them."""
    model = payload.get("model") if isinstance(payload, Mapping) else None
    return model if isinstance(model, str) and model in limits else DEFAULT_PROVIDER


def gated_call(ctx: Any, payload: Mapping[str, Any], call: Callable[[], dict], *,
               tokens: int | None = None) -> dict:
    """The bundled plugins' generation call under the governor: ``call()`` inside
    ``ctx.quota(...)`` with the token estimate (``tokens``, default from the payload's
    ``wordCount``), corrected from the answer's usage."""
    # The governor's limits, parsed once per poller (no governor: ctx.quota is free).
    poller = ctx.poller
    limits = poller.resource(QUOTA).limits if poller.provides(QUOTA) else {}
    provider = provider_for(payload, limits)
    if tokens is None:
        tokens = estimate_tokens(payload, getattr(ctx.settings, "quota_tokens_per_word", 1.5))
    with ctx.quota(provider, tokens=tokens) as permit:
        result = call()
        permit.used(reported_tokens(result))
    return result
