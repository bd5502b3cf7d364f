"""The quota governor's shared record: one document per provider, on both backends.

Every poller of every host asks the same record before it calls a provider (the
generation service by default). ``acquire_permit`` is one store round trip: MongoDB
one ``find_one_and_update`` whose update is a pipeline (the whole decision runs on the
server, atomically), SQLite one ``BEGIN IMMEDIATE`` transaction. ``report_call`` (after
the call: the permit released, the token estimate corrected, the breaker and the pause
updated) is one more. The record (collection/table ``vip_quotas``, ``_id`` = provider)::

    {"_id": provider,
     "log": [{"t": epoch s, "p": permit, "u": user, "k": tokens}],   # calls of the last 60 s
     "held": [{"p": permit, "u": user, "until": epoch s}],           # in flight (leases)
     "waiting": [{"u": user, "t": epoch s}],     # users refused lately (fairness)
     "pausedUntil": epoch s | None, "pauseReason": str | None,
     "breaker": {"state": "closed"|"open"|"half_open", "failures": int,
                 "openUntil": epoch s | None, "successes": int}}

The rules (``acquire_rule``, ``report_rule``) are written once in Python and applied as
is by SQLite; MongoDB runs the same rules as update pipelines (``store/quota_mongo.py``),
and the contract tests (tests/store/test_quota_contract.py) hold the two to the same
answers. In order, an acquire is refused when:

1. the provider is paused (a 429, or a 503 with Retry-After): until ``pausedUntil``;
2. its breaker is open: until ``openUntil``; once that has passed the breaker is
   half-open and only ``breaker_probes`` calls may be in flight at once;
3. ``rpm`` calls started in the last 60 s (a sliding window: no 60 s window ever holds
   more): until the oldest of them is 60 s old;
4. the tokens of the last 60 s plus this call's estimate exceed ``tpm`` (a call alone in
   the window always passes): idem;
5. ``concurrency`` permits are held, or ``user_max_inflight`` by this user: shortly;
6. fairness: other users refused within ``fair_wait_s`` who use less than this user are
   at least as many as the free places: shortly. A user's use is its calls in flight
   (its held permits) plus its calls started in the window: with calls longer than the
   window (5-10 minute generations), what a user holds still counts. When the budget is
   short, the user who uses less goes first (a deficit rule).

A refused user is noted in ``waiting`` (not when refused for its own cap); a granted one
leaves it. Permits are leases:
one whose poller died expires at ``until`` on its own. Times are epoch seconds inside
the record; the methods take and give timezone-aware UTC datetimes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vip_worker.store.sqlite_schema import immediate

QUOTAS = "vip_quotas"
WINDOW_S = 60.0
# How soon a call refused for concurrency, a user's cap, fairness or a half-open breaker's
# probes asks again (before the caller's jitter): such a place frees when a call ends.
SHORT_RETRY_S = 5.0
# What a call's report says happened.
OK, ERROR, THROTTLED, OTHER = "ok", "error", "throttled", "other"
OUTCOMES = (OK, ERROR, THROTTLED, OTHER)
# A user refused for its own cap is not waiting for a place: fairness must not keep one
# free for it (nobody else could have it, and it could not take it).
NOT_WAITING = ("user_inflight",)


@dataclass(frozen=True)
class QuotaLimits:
    """One provider's limits (0: no limit of that kind)."""

    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    user_max_inflight: int = 0
    lease_s: float = 900.0  # a permit's lease: it expires on its own after this long
    breaker_failures: int = 5  # consecutive failed calls that open the breaker (0: never)
    breaker_cooldown_s: float = 30.0
    breaker_probes: int = 2  # calls in flight while half-open; that many successes close it
    fair_wait_s: float = 30.0  # how long a refused user counts as waiting


@dataclass(frozen=True)
class Grant:
    """An acquire's answer.

    :ivar ok: granted: call now, then ``report_call`` with ``permit``.
    :ivar reason: why not (``paused``, ``breaker_open``, ``breaker_half_open``, ``rpm``,
        ``tpm``, ``concurrency``, ``user_inflight``, ``fair_share``); None when granted.
    :ivar retry_at: when to ask again (before jitter); None when granted.
    :ivar paused_until: the provider's pause, when one is in force (callers cache it).
    """

    ok: bool
    permit: str
    reason: str | None = None
    retry_at: datetime | None = None
    paused_until: datetime | None = None
    breaker: str = "closed"


def epoch(value: datetime) -> float:
    return value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def breaker_state(record: dict[str, Any], now: float) -> dict[str, Any]:
    """The breaker as of ``now``: open -> half_open once its cool-down has passed."""
    breaker = {"state": "closed", "failures": 0, "openUntil": None, "successes": 0,
               **(record.get("breaker") or {})}
    if breaker["state"] == "open" and (breaker["openUntil"] or 0) <= now:
        breaker["state"] = "half_open"  # open -> half_open: a few probes first
        breaker["successes"] = 0
    return breaker


def use(log: list, held: list, user: str) -> int:
    """A user's use, for fairness: its calls in flight plus its calls started in the
    window (a call both held and recent counts twice, the same for every user)."""
    return sum(e["u"] == user for e in log) + sum(h["u"] == user for h in held)


def refusal(record: dict[str, Any], log: list, held: list, waiting: list,
            breaker: dict, now: float, user: str, tokens: int,
            limits: QuotaLimits) -> tuple[str | None, float | None]:
    """Why an acquire is refused, and when to ask again; (None, None): granted."""
    paused = record.get("pausedUntil") or 0
    if paused > now:
        return "paused", paused
    if breaker["state"] == "open":
        return "breaker_open", breaker["openUntil"]
    if breaker["state"] == "half_open" and len(held) >= max(1, limits.breaker_probes):
        return "breaker_half_open", now + SHORT_RETRY_S
    oldest = min((e["t"] for e in log), default=now) + WINDOW_S
    if limits.rpm and len(log) >= limits.rpm:
        return "rpm", oldest
    if limits.tpm and log and sum(e["k"] for e in log) + tokens > limits.tpm:
        return "tpm", oldest
    if limits.concurrency and len(held) >= limits.concurrency:
        return "concurrency", now + SHORT_RETRY_S
    if limits.user_max_inflight and sum(h["u"] == user for h in held) >= \
            limits.user_max_inflight:
        return "user_inflight", now + SHORT_RETRY_S
    free = [n for n in (limits.rpm and limits.rpm - len(log),
                        limits.concurrency and limits.concurrency - len(held)) if n]
    mine = use(log, held, user)
    ahead = sum(use(log, held, w["u"]) < mine for w in waiting)
    if free and ahead >= min(free):
        return "fair_share", now + SHORT_RETRY_S
    return None, None


def acquire_rule(record: dict[str, Any] | None, now: float, permit: str, user: str,
                 tokens: int, limits: QuotaLimits) -> tuple[dict[str, Any], Grant]:
    """The record after an acquire, and the answer."""
    record = dict(record or {})
    log = [e for e in record.get("log") or [] if e["t"] > now - WINDOW_S]
    held = [h for h in record.get("held") or [] if h["until"] > now]
    waiting = [w for w in record.get("waiting") or []
               if w["t"] > now - limits.fair_wait_s and w["u"] != user]
    breaker = breaker_state(record, now)
    reason, retry = refusal(record, log, held, waiting, breaker, now, user, tokens, limits)
    if reason is None:
        log.append({"t": now, "p": permit, "u": user, "k": tokens})
        held.append({"p": permit, "u": user, "until": now + limits.lease_s})
    elif reason not in NOT_WAITING:
        waiting.append({"u": user, "t": now})
    record.update(log=log, held=held, waiting=waiting, breaker=breaker)
    paused = record.get("pausedUntil")
    grant = Grant(reason is None, permit, reason, from_epoch(retry),
                  from_epoch(paused) if paused and paused > now else None, breaker["state"])
    return record, grant


def report_rule(record: dict[str, Any] | None, now: float, permit: str, outcome: str,
                tokens: int | None, retry_after_s: float | None,
                limits: QuotaLimits) -> dict[str, Any]:
    """The record after a call ended: its permit released, its tokens corrected (when the
    service reported usage), the breaker and the pause updated."""
    record = dict(record or {})
    record["held"] = [h for h in record.get("held") or [] if h["p"] != permit and
                      h["until"] > now]
    if tokens is not None:
        record["log"] = [{**e, "k": tokens} if e["p"] == permit else e
                         for e in record.get("log") or []]
    breaker = breaker_state(record, now)
    if outcome == OK:
        breaker["failures"] = 0
        if breaker["state"] == "half_open":
            breaker["successes"] += 1
            if breaker["successes"] >= max(1, limits.breaker_probes):
                breaker.update(state="closed", successes=0)  # half_open -> closed
    elif outcome == ERROR:
        breaker["failures"] += 1
        if breaker["state"] == "half_open" or (
                limits.breaker_failures and breaker["failures"] >= limits.breaker_failures
                and breaker["state"] == "closed"):
            # closed | half_open -> open
            breaker.update(state="open", openUntil=now + limits.breaker_cooldown_s,
                           successes=0)
    elif outcome == THROTTLED:
        until = now + max(0.0, retry_after_s or 0.0)
        if until > (record.get("pausedUntil") or 0):
            record.update(pausedUntil=until, pauseReason="throttled")
    record["breaker"] = breaker
    return record


def check_report(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")


# -- the backends' methods (mixins of SqliteStore and MongoStore) --------------------------


class SqliteQuota:
    """The governor on SQLite: each call one ``BEGIN IMMEDIATE`` transaction (one host)."""

    def _quota_table(self, conn) -> None:
        if getattr(self, "_quota_conn", None) is not conn:
            conn.execute(f'CREATE TABLE IF NOT EXISTS "{QUOTAS}" (id TEXT PRIMARY KEY, '
                         "doc TEXT NOT NULL)")
            self._quota_conn = conn

    def _quota_update(self, provider: str, change) -> dict[str, Any]:
        with self._lock, self._errors():
            conn = self._connection()
            self._quota_table(conn)
            with immediate(conn):
                row = conn.execute(f'SELECT doc FROM "{QUOTAS}" WHERE id = ?',
                                   (provider,)).fetchone()
                record = change(json.loads(row[0]) if row else {"_id": provider})
                conn.execute(f'INSERT INTO "{QUOTAS}" (id, doc) VALUES (?, ?) ON CONFLICT(id) '
                             "DO UPDATE SET doc = excluded.doc", (provider, json.dumps(record)))
        return record

    def acquire_permit(self, provider: str, permit: str, now: datetime, *, user: str = "",
                       tokens: int = 0, limits: QuotaLimits) -> Grant:
        """Ask for one call to ``provider`` (see the module docstring). One transaction."""
        answer: list[Grant] = []

        def change(record):
            record, grant = acquire_rule(record, epoch(now), permit, user, int(tokens), limits)
            answer.append(grant)
            return record

        self._quota_update(provider, change)
        return answer[0]

    def report_call(self, provider: str, permit: str, now: datetime, *, outcome: str,
                    tokens: int | None = None, retry_after_s: float | None = None,
                    limits: QuotaLimits) -> None:
        """A call under ``permit`` ended with ``outcome`` (ok, error, throttled, other)."""
        check_report(outcome)
        self._quota_update(provider, lambda record: report_rule(
            record, epoch(now), permit, outcome, tokens, retry_after_s, limits))

    def quota_record(self, provider: str) -> dict[str, Any] | None:
        """The provider's record as stored (epoch seconds), or None."""
        with self._lock, self._errors():
            conn = self._connection()
            self._quota_table(conn)
            row = conn.execute(f'SELECT doc FROM "{QUOTAS}" WHERE id = ?',
                               (provider,)).fetchone()
        return json.loads(row[0]) if row else None
