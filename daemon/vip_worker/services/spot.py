"""Watch the instance metadata service for a spot interruption or Auto Scaling termination.

A daemon thread in the master (no asyncio, no boto3: ``urllib`` with short timeouts).
Every ``interval_s`` it asks IMDSv2:

- ``/latest/meta-data/spot/instance-action``: 404 normally; 200
  ``{"action": "terminate" | "stop" | "hibernate", "time": "...Z"}`` about two minutes
  before EC2 interrupts a spot instance;
- ``/latest/meta-data/autoscaling/target-lifecycle-state``: ``InService`` normally,
  ``Terminated`` once Auto Scaling has chosen this instance for termination (no time given).

The first notice calls ``on_notice(reason, deadline_wall, action)`` once and ends the
thread: the master is stopping. Errors (refused, timeouts, 401, bad answers) are logged at
most once a minute per event name and never end the thread.

IMDSv2 only: a session token from ``PUT /latest/api/token`` goes with every GET (instances
that require IMDSv2 answer a token-less GET with 401). The opener ignores HTTP(S)_PROXY:
the metadata service must never be asked through a proxy, and redirects are not followed.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

log = logging.getLogger("vip_worker.services.spot")

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
ASG_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
TOKEN_TTL_S = 21600  # the longest IMDS allows (6 h)
REQUEST_TIMEOUT_S = 1.0
ERROR_LOG_EVERY_S = 60.0
SPOT_ACTIONS = ("terminate", "stop", "hibernate")

# What the master does with a notice (used by cli.start_services).
SAFETY_MARGIN_S = 20.0  # hand work back this long before the notice's time
SPOT_NOTICE_S = 120.0  # a spot notice whose time cannot be read: EC2's usual two minutes

# on_notice(reason, deadline_wall, action)
OnNotice = Callable[[str, datetime | None, str], None]


@dataclass(frozen=True)
class Notice:
    reason: str  # "spot_interruption" | "asg_termination"
    action: str  # "terminate" | "stop" | "hibernate"
    deadline: datetime | None  # when EC2 acts (UTC); None: not given


class ImdsError(Exception):
    """The metadata service could not be asked, or answered something unexpected."""

    def __init__(self, event: str, detail: str) -> None:
        super().__init__(detail)
        self.event = event  # the log event: spot.imds_unreachable | spot.imds_error


def hand_back_delay_s(notice: Notice, now: datetime,
                      margin_s: float = SAFETY_MARGIN_S) -> float | None:
    """Seconds from ``now`` until running work must be handed back (never negative).

    None for an Auto Scaling termination: it gives no time, and the instance waits in the
    group's termination lifecycle hook, whose length only the operator knows. The stop is
    then an ordinary graceful one, bounded by ``grace_period_s``.
    """
    if notice.reason == "asg_termination" and notice.deadline is None:
        return None
    if notice.deadline is not None:
        left = (notice.deadline - now).total_seconds()
    else:
        left = SPOT_NOTICE_S
    return max(0.0, left - margin_s)


def stopper(request_stop: Callable[[str, float | None], None], grace_period_s: float,
            clock: Callable[[], float] = time.monotonic,
            wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> OnNotice:
    """The daemon's ``on_notice``: log ``spot.notice``, then ask the master to stop.

    :param request_stop: ``Arbiter.request_stop(reason, hand_back_by)``; thread-safe.
    """

    def on_notice(reason: str, deadline: datetime | None, action: str) -> None:
        now = wall()
        delay_s = hand_back_delay_s(Notice(reason, action, deadline), now)
        log.warning("spot.notice", extra={
            "reason": reason, "action": action,
            "notice_time": deadline.isoformat() if deadline else None,
            "grace_period_s": grace_period_s,
            "hand_back_in_s": None if delay_s is None else round(delay_s, 1),
            "hand_back_at": None if delay_s is None
            else (now + timedelta(seconds=delay_s)).isoformat()})
        request_stop(reason, None if delay_s is None else clock() + delay_s)

    return on_notice


def spot_notice(body: bytes) -> Notice:
    """The instance-action document -> a Notice.

    A 200 there means an interruption is scheduled, so an unreadable document still counts
    (as ``terminate`` with no time): stopping needlessly costs less than being cut off.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    action = str(doc.get("action", ""))
    return Notice("spot_interruption", action if action in SPOT_ACTIONS else "terminate",
                  parse_time(doc.get("time")))


def parse_time(text: object) -> datetime | None:
    """``2026-01-15T10:32:00Z`` -> an aware UTC datetime; None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx comes back as an HTTP status, reported as an error


class SpotWatcher:
    """Polls IMDSv2 from a daemon thread; ``start()`` / ``stop()``; ``poll_once()`` for tests.

    :param endpoint: the metadata service, e.g. ``http://127.0.0.1:8111`` in tests.
    :param interval_s: seconds between polls.
    :param on_notice: called once, from the watcher thread, with the first notice.
    :param clock: monotonic seconds; drives token refresh and log throttling.
    """

    def __init__(self, endpoint: str, interval_s: float, on_notice: OnNotice,
                 clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = REQUEST_TIMEOUT_S, token_ttl_s: int = TOKEN_TTL_S) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.interval_s = interval_s
        self.on_notice = on_notice
        self.clock = clock
        self.timeout_s = timeout_s
        self.token_ttl_s = token_ttl_s
        # No proxy, whatever HTTP(S)_PROXY says; no redirects (the token stays at IMDS).
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
        self.token: str | None = None
        self.token_renew_at = 0.0
        self.notice: Notice | None = None
        self.logged_at: dict[str, float] = {}  # event -> when it was last logged
        self.suppressed: dict[str, int] = {}  # event -> errors not logged since
        self.failing = False
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------

    def start(self) -> None:
        log.info("spot.watching", extra={"endpoint": self.endpoint,
                                         "interval_s": self.interval_s})
        self.thread = threading.Thread(target=self.run, name="spot-watcher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            # A poll in progress ends within a few request timeouts.
            self.thread.join(timeout=4 * self.timeout_s + 1)

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.poll_once() is not None:
                return  # one notice per life: the master is stopping now
            self.stopped.wait(self.interval_s)

    def poll_once(self) -> Notice | None:
        """Ask once; on the first notice call ``on_notice``. Never raises."""
        if self.notice is not None:
            return self.notice
        try:
            notice = self.check()
        except ImdsError as exc:
            self.report(exc)
            return None
        if self.failing:
            self.failing = False
            log.info("spot.imds_recovered", extra={"endpoint": self.endpoint})
        if notice is not None:
            self.notice = notice
            try:
                self.on_notice(notice.reason, notice.deadline, notice.action)
            except Exception:  # noqa: BLE001 - the watcher thread must outlive a bad callback
                log.exception("spot.notice_failed", extra={"reason": notice.reason})
        return notice

    # -- asking IMDS ------------------------------------------------------------------

    def check(self) -> Notice | None:
        status, body = self.get(SPOT_PATH)
        if status == 200:
            return spot_notice(body)
        if status != 404:
            raise ImdsError(event="spot.imds_error", detail=f"{SPOT_PATH}: HTTP {status}")
        status, body = self.get(ASG_PATH)
        if status == 200 and body.decode(errors="replace").strip() == "Terminated":
            return Notice("asg_termination", "terminate", None)
        if status not in (200, 404):  # 404: not in an Auto Scaling group
            raise ImdsError(event="spot.imds_error", detail=f"{ASG_PATH}: HTTP {status}")
        return None

    def get(self, path: str) -> tuple[int, bytes]:
        """GET with the session token; a 401 (expired or revoked token) gets one new token."""
        for _ in range(2):
            token = self.session_token()
            request = urllib.request.Request(self.endpoint + path, method="GET",
                                             headers={"X-aws-ec2-metadata-token": token})
            status, body = self.send(request)
            if status != 401:
                return status, body
            self.token = None
        raise ImdsError(event="spot.imds_error", detail=f"{path}: HTTP 401 with a fresh token")

    def session_token(self) -> str:
        if self.token is not None and self.clock() < self.token_renew_at:
            return self.token
        request = urllib.request.Request(
            self.endpoint + TOKEN_PATH, method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)})
        asked_at = self.clock()
        status, body = self.send(request)
        if status != 200 or not body:
            raise ImdsError(event="spot.imds_error", detail=f"{TOKEN_PATH}: HTTP {status}")
        self.token = body.decode(errors="replace").strip()
        # Renew well before IMDS expires it: a quarter of the TTL early, at most a minute.
        self.token_renew_at = asked_at + self.token_ttl_s - min(60.0, self.token_ttl_s / 4)
        return self.token

    def send(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                return response.status, response.read(65536)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, b""
        except urllib.error.URLError as exc:
            problem = str(exc.reason)
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad status lines
            problem = repr(exc)
        raise ImdsError(event="spot.imds_unreachable", detail=f"{request.full_url}: {problem}")

    def report(self, exc: ImdsError) -> None:
        """Log an error at most once per ``ERROR_LOG_EVERY_S`` per event name."""
        self.failing = True
        now = self.clock()
        last = self.logged_at.get(exc.event)
        if last is not None and now - last < ERROR_LOG_EVERY_S:
            self.suppressed[exc.event] = self.suppressed.get(exc.event, 0) + 1
            return
        self.logged_at[exc.event] = now
        log.warning(exc.event, extra={"endpoint": self.endpoint, "error": str(exc),
                                      "suppressed": self.suppressed.pop(exc.event, 0)})
