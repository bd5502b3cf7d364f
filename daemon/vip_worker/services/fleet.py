"""The fleet reporter: each daemon's record in the job store's fleet registry.

Poller 0 of every daemon runs it (like the lifeline): every ``fleet_report_interval_s``
it reads the master's ``status.json`` (``statusfile``: every poller's in-flight count,
the master's pid, uptime and stop state) and writes ONE upsert, ``report_daemon``
(``store/fleet.py`` holds the record's fields and the "lost" rule). The record's state:

- ``running``;
- ``draining``: the master is stopping (a signal), or this poller began its drain;
- ``spot_notice``: the master is stopping for a spot interruption or a termination
  notice (its stop reason is not a signal);
- ``stopped``: written once by poller 0 at the end of its drain when the master itself is
  stopping (its ``status.json``, written before it signals its pollers, says so: a clean
  shutdown). A poller 0 that is only replaced (a reload, a recycle) or orphaned (its master
  died) reports nothing from its drain: its successor reports, or the record goes lost.

The store is reached duck-typed through the poller's ``store`` resource, its calls in a
thread of their own (it blocks). A store outage skips a report (``fleet.report_failed``);
no store: the reporter is off (``fleet.off``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from vip_worker import statusfile

log = logging.getLogger("vip_worker.fleet")
SIGNAL_REASON = "signal"  # the arbiter's stop reason for a signal (else: a notice)


def daemon_id(hostname: str, master_pid: int) -> str:
    return f"{hostname}:{master_pid}"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("vip-worker")
    except PackageNotFoundError:
        return "unknown"


def state_of(status: dict[str, Any] | None, draining: bool) -> str:
    """The record's state from the master's status (None: unreadable) and this poller's."""
    stopping = (status or {}).get("stopping")
    if stopping and (status or {}).get("stop_reason") not in (None, SIGNAL_REASON):
        return "spot_notice"
    if stopping or draining:
        return "draining"
    return "running"


class FleetReporter:
    """One daemon's reports.

    :param settings: the daemon's settings (``processes``, ``fleet_report_interval_s``).
    :param store_of: returns the job store (opened on first use: called off the loop).
    :param run_dir: where the master writes ``status.json``.
    :param wall: wall-clock time, aware UTC (the registry's times are wall-clock).
    """

    def __init__(self, settings, store_of: Callable[[], Any], run_dir: str, *,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 hostname: str | None = None) -> None:
        self.settings = settings
        self.store_of = store_of
        self.run_dir = run_dir
        self.wall = wall
        self.hostname = hostname or socket.gethostname()
        self.master_pid = os.getppid()
        self.started_at = wall()  # this poller's, until status.json gives the master's
        self.master_started = False
        self.version = version()
        self.draining = False
        self.off = False
        self.executor: ThreadPoolExecutor | None = None
        self.live: int | None = None  # live daemons, as the last report's read saw them

    @classmethod
    def open(cls, settings, store_of: Callable[[], Any]) -> FleetReporter:
        """The reporter of this daemon: ``status.json`` where the master writes it."""
        from vip_worker.store.factory import runtime_dir

        return cls(settings, store_of, runtime_dir(settings))

    @property
    def interval_s(self) -> float:
        return float(self.settings.fleet_report_interval_s)

    @property
    def daemon_id(self) -> str:
        return daemon_id(self.hostname, self.master_pid)

    async def run(self) -> None:
        """Report at once, then every interval (monotonic), until cancelled."""
        if not self.interval_s:
            return
        next_at = time.monotonic()
        while not self.off:
            if await self.report():
                self.live = await self.live_daemons()
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def record(self, state: str | None = None) -> dict[str, Any]:
        """This daemon's record now (``status.json`` read; a missing or unreadable file:
        this poller's own view, one poller of unknown in-flight)."""
        try:
            status = statusfile.read(self.run_dir)
        except (OSError, ValueError):
            status = None
        pollers = list((status or {}).get("pollers") or [])
        if status and status.get("uptime_s") is not None and not self.master_started:
            # The master's start, once: status.json is rewritten every few seconds, so
            # the uptime it holds lags by up to that much.
            self.master_started = True
            self.started_at = self.wall() - timedelta(seconds=float(status["uptime_s"]))
        started_at = self.started_at
        return {"hostname": self.hostname, "pid": self.master_pid, "version": self.version,
                "pollers": int((status or {}).get("target") or self.settings.processes),
                "inflight": [int(p.get("in_flight") or 0) for p in pollers],
                "startedAt": started_at.replace(microsecond=0),
                "state": state or state_of(status, self.draining),
                "intervalS": self.interval_s}

    async def report(self, state: str | None = None) -> bool:
        """One upsert of this daemon's record; False when it could not be written."""
        if self.off:
            return False
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="fleet")

        def work() -> bool:
            try:
                self.store_of().report_daemon(self.daemon_id, self.record(state), self.wall())
                return True
            except LookupError as exc:  # the context's "no resource 'store'"
                self.off = True
                log.info("fleet.off", extra={"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - an outage or a bug: next interval
                log.warning("fleet.report_failed", extra={
                    "error": f"{type(exc).__name__}: {exc}"[:500]})
            return False

        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def live_daemons(self) -> int | None:
        """How many daemons of the registry are live (``store.fleet.live``: not lost, not
        stopped); None when the store cannot say."""
        if self.off or self.executor is None:
            return None

        def work() -> int | None:
            from vip_worker.store.fleet import live

            try:
                records = self.store_of().daemons()
            except Exception as exc:  # noqa: BLE001 - the metric waits for the next one
                log.warning("fleet.read_failed", extra={
                    "error": f"{type(exc).__name__}: {exc}"[:500]})
                return None
            return len(live(records, self.wall()))

        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def master_stopping(self) -> bool:
        """Whether this poller's master says it is stopping (its ``status.json``)."""
        try:
            status = statusfile.read(self.run_dir)
        except (OSError, ValueError):
            return False
        return bool(status.get("stopping")) and status.get("pid") == self.master_pid

    async def stopping(self, final: bool, timeout_s: float) -> None:
        """The drain's reports (bounded by ``timeout_s``), only while the master stops:
        ``draining`` when it begins, ``stopped`` when it ended (``final``)."""
        if not self.master_stopping():
            return  # replaced or orphaned: not this daemon's stop (see the docstring)
        self.draining = True
        try:
            await asyncio.wait_for(self.report("stopped" if final else None), timeout_s)
        except TimeoutError:
            log.warning("fleet.report_late", extra={"timeout_s": timeout_s})

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)
            self.executor = None
