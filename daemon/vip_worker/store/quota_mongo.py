"""The quota governor's rules (``store/quota.py``) as MongoDB update pipelines: each
acquire and each report is one atomic ``find_one_and_update`` / ``update_one`` whose
decision runs on the server. Written field by field (no ``$mergeObjects``) so that
mongomock runs them too; the contract tests hold them to the Python rules' answers.
Update pipelines need MongoDB 4.2 or later."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vip_worker.store.quota import (
    ERROR,
    NOT_WAITING,
    OK,
    QUOTAS,
    SHORT_RETRY_S,
    THROTTLED,
    WINDOW_S,
    Grant,
    QuotaLimits,
    check_report,
    epoch,
    from_epoch,
)


def _size_where(array: str, field: str, value: Any) -> dict:
    return {"$size": {"$filter": {"input": array, "as": "x",
                                  "cond": {"$eq": [f"$$x.{field}", value]}}}}


def _breaker(state: Any = "$breaker.state", failures: Any = "$breaker.failures",
             open_until: Any = "$breaker.openUntil", successes: Any = "$breaker.successes"
             ) -> dict:
    """A breaker object, field by field (mongomock has no ``$mergeObjects``)."""
    return {"state": state, "failures": failures, "openUntil": open_until,
            "successes": successes}


def _breaker_expr(now: float) -> dict:
    """``breaker_state`` as an expression over the stored ``$breaker``."""
    stored = _breaker({"$ifNull": ["$breaker.state", "closed"]},
                      {"$ifNull": ["$breaker.failures", 0]},
                      {"$ifNull": ["$breaker.openUntil", None]},
                      {"$ifNull": ["$breaker.successes", 0]})
    return {"$let": {"vars": {"b": stored}, "in": {"$cond": [
        {"$and": [{"$eq": ["$$b.state", "open"]},
                  {"$lte": [{"$ifNull": ["$$b.openUntil", 0]}, now]}]},
        _breaker("half_open", "$$b.failures", "$$b.openUntil", 0),
        _breaker("$$b.state", "$$b.failures", "$$b.openUntil", "$$b.successes")]}}}


def acquire_pipeline(now: float, permit: str, user: str, tokens: int,
                     limits: QuotaLimits) -> list[dict]:
    """``acquire_rule`` as a MongoDB update pipeline; the decision lands in ``grant``."""
    log_in = {"$filter": {"input": {"$ifNull": ["$log", []]}, "as": "e",
                          "cond": {"$gt": ["$$e.t", now - WINDOW_S]}}}
    held_in = {"$filter": {"input": {"$ifNull": ["$held", []]}, "as": "h",
                           "cond": {"$gt": ["$$h.until", now]}}}
    waiting_in = {"$filter": {"input": {"$ifNull": ["$waiting", []]}, "as": "w", "cond": {
        "$and": [{"$gt": ["$$w.t", now - limits.fair_wait_s]}, {"$ne": ["$$w.u", user]}]}}}
    stage1 = {"$set": {"log": log_in, "held": held_in, "waiting": waiting_in,
                       "breaker": _breaker_expr(now)}}
    oldest = {"$add": [{"$ifNull": [{"$min": "$log.t"}, now]}, WINDOW_S]}
    free = [{"$subtract": [limits.rpm, {"$size": "$log"}]}] if limits.rpm else []
    if limits.concurrency:
        free.append({"$subtract": [limits.concurrency, {"$size": "$held"}]})
    # ``use``: a user's calls in flight plus its calls started in the window.
    mine = {"$add": [_size_where("$log", "u", user), _size_where("$held", "u", user)]}
    theirs = {"$add": [_size_where("$log", "u", "$$w.u"), _size_where("$held", "u", "$$w.u")]}
    ahead = {"$size": {"$filter": {"input": "$waiting", "as": "w",
                                   "cond": {"$lt": [theirs, mine]}}}}
    checks: list[tuple[str, Any, Any]] = [
        ("paused", {"$gt": [{"$ifNull": ["$pausedUntil", 0]}, now]}, "$pausedUntil"),
        ("breaker_open", {"$eq": ["$breaker.state", "open"]}, "$breaker.openUntil"),
        ("breaker_half_open", {"$and": [
            {"$eq": ["$breaker.state", "half_open"]},
            {"$gte": [{"$size": "$held"}, max(1, limits.breaker_probes)]}]},
         now + SHORT_RETRY_S)]
    if limits.rpm:
        checks.append(("rpm", {"$gte": [{"$size": "$log"}, limits.rpm]}, oldest))
    if limits.tpm:
        checks.append(("tpm", {"$and": [{"$gt": [{"$size": "$log"}, 0]}, {"$gt": [
            {"$add": [{"$sum": "$log.k"}, tokens]}, limits.tpm]}]}, oldest))
    if limits.concurrency:
        checks.append(("concurrency", {"$gte": [{"$size": "$held"}, limits.concurrency]},
                       now + SHORT_RETRY_S))
    if limits.user_max_inflight:
        checks.append(("user_inflight", {"$gte": [_size_where("$held", "u", user),
                                                  limits.user_max_inflight]},
                       now + SHORT_RETRY_S))
    if free:
        checks.append(("fair_share", {"$gte": [ahead, {"$min": free}]}, now + SHORT_RETRY_S))
    branches = [{"case": cond, "then": {"reason": name, "retry": retry}}
                for name, cond, retry in checks]
    decision = {"$switch": {"branches": branches, "default": {"reason": None, "retry": None}}}
    stage2 = {"$set": {"grant": decision}}
    # $ifNull: in an expression a missing field is not null ($eq would say "refused").
    granted = {"$eq": [{"$ifNull": ["$grant.reason", None]}, None]}
    stage3 = {"$set": {
        "log": {"$cond": [granted, {"$concatArrays": [
            "$log", [{"t": now, "p": permit, "u": user, "k": tokens}]]}, "$log"]},
        "held": {"$cond": [granted, {"$concatArrays": [
            "$held", [{"p": permit, "u": user, "until": now + limits.lease_s}]]}, "$held"]},
        "waiting": {"$cond": [
            {"$or": [granted, {"$in": ["$grant.reason", list(NOT_WAITING)]}]}, "$waiting",
            {"$concatArrays": ["$waiting", [{"u": user, "t": now}]]}]},
        "grant": {"reason": "$grant.reason", "retry": "$grant.retry", "p": permit}}}
    return [stage1, stage2, stage3]


def report_pipeline(now: float, permit: str, outcome: str, tokens: int | None,
                    retry_after_s: float | None, limits: QuotaLimits) -> list[dict]:
    """``report_rule`` as a MongoDB update pipeline."""
    held = {"$filter": {"input": {"$ifNull": ["$held", []]}, "as": "h", "cond": {
        "$and": [{"$ne": ["$$h.p", permit]}, {"$gt": ["$$h.until", now]}]}}}
    stage1: dict[str, Any] = {"held": held, "breaker": _breaker_expr(now)}
    if tokens is not None:
        stage1["log"] = {"$map": {"input": {"$ifNull": ["$log", []]}, "as": "e", "in": {
            "$cond": [{"$eq": ["$$e.p", permit]},
                      {"t": "$$e.t", "p": "$$e.p", "u": "$$e.u", "k": tokens}, "$$e"]}}}
    stages: list[dict] = [{"$set": stage1}]
    probes = max(1, limits.breaker_probes)
    if outcome == OK:
        half = {"$eq": ["$breaker.state", "half_open"]}
        done = {"$gte": [{"$add": ["$breaker.successes", 1]}, probes]}
        stages.append({"$set": {"breaker": {"$cond": [
            half,
            {"$cond": [done, _breaker("closed", 0, successes=0),
                       _breaker(failures=0, successes={"$add": ["$breaker.successes", 1]})]},
            _breaker(failures=0)]}}})
    elif outcome == ERROR:
        failures = {"$add": ["$breaker.failures", 1]}
        trips = [{"$eq": ["$breaker.state", "half_open"]}]
        if limits.breaker_failures:
            trips.append({"$and": [{"$eq": ["$breaker.state", "closed"]},
                                   {"$gte": [failures, limits.breaker_failures]}]})
        stages.append({"$set": {"breaker": {"$cond": [
            {"$or": trips},
            _breaker("open", failures, now + limits.breaker_cooldown_s, 0),
            _breaker(failures=failures)]}}})
    elif outcome == THROTTLED:
        until = now + max(0.0, retry_after_s or 0.0)
        later = {"$gt": [until, {"$ifNull": ["$pausedUntil", 0]}]}
        stages.append({"$set": {
            "pausedUntil": {"$cond": [later, until, "$pausedUntil"]},
            "pauseReason": {"$cond": [later, "throttled", "$pauseReason"]}}})
    return stages


def grant_of(record: dict[str, Any], now: float) -> Grant:
    """The ``Grant`` a MongoDB acquire left in its record."""
    grant = record.get("grant") or {}
    paused = record.get("pausedUntil")
    return Grant(grant.get("reason") is None, grant.get("p", ""), grant.get("reason"),
                 from_epoch(grant.get("retry")),
                 from_epoch(paused) if paused and paused > now else None,
                 (record.get("breaker") or {}).get("state", "closed"))


class MongoQuota:
    """The governor on MongoDB: each call one atomic ``find_one_and_update`` (a pipeline)."""

    def acquire_permit(self, provider: str, permit: str, now: datetime, *, user: str = "",
                       tokens: int = 0, limits: QuotaLimits) -> Grant:
        """Ask for one call to ``provider`` (see the module docstring). One round trip."""
        from pymongo import ReturnDocument

        with self._errors():
            record = self._db[QUOTAS].find_one_and_update(
                {"_id": provider},
                acquire_pipeline(epoch(now), permit, user, int(tokens), limits),
                upsert=True, return_document=ReturnDocument.AFTER)
        return grant_of(record, epoch(now))

    def report_call(self, provider: str, permit: str, now: datetime, *, outcome: str,
                    tokens: int | None = None, retry_after_s: float | None = None,
                    limits: QuotaLimits) -> None:
        """A call under ``permit`` ended with ``outcome`` (ok, error, throttled, other)."""
        check_report(outcome)
        with self._errors():
            self._db[QUOTAS].update_one(
                {"_id": provider},
                report_pipeline(epoch(now), permit, outcome, tokens, retry_after_s, limits),
                upsert=True)

    def quota_record(self, provider: str) -> dict[str, Any] | None:
        """The provider's record as stored (epoch seconds), or None."""
        with self._errors():
            record = self._db[QUOTAS].find_one({"_id": provider})
        if record is not None:
            record.pop("grant", None)
        return record
