"""Live updates: ONE producer task per web process, fanned out to every open browser.

``Hub`` runs the producer while at least one browser listens (none: no SQS or store
reads at all). Every ``dashboard_refresh_s`` it calls ``produce()`` once (the overview's
counts through the shared queue-attributes cache, one ``read_minutes``, one ``daemons()``,
one ``search_jobs`` for the newest jobs, the fragments rendered once), frames the result as
one Server-Sent Event, and wakes every subscriber, which writes that same frame. A
subscriber that is slow to read skips to the newest frame: nothing queues up per browser,
and no browser causes a read of its own.

Events on ``/dashboard/events``::

    event: update     data: {"at": ISO time, "fragments": {element id: HTML}}
    : keepalive       a comment every KEEPALIVE_S of silence, so proxies keep it open

The page's script (static/live.js) replaces the inner HTML of each element whose id is a
key of ``fragments``; elements a page does not have are skipped, so one stream serves the
overview, the fleet page and the jobs page's newest jobs. Without JavaScript the pages are
the same HTML on a reload.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's types, which name
# the dependency made inside add_routes.
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from vip_worker.web.dashboard import fleet, jobs, overview
from vip_worker.web.dashboard import session as sessions
from vip_worker.web.dashboard.queuestats import QueueStats, sqs_reader_factory
from vip_worker.web.dashboard.session import Session

log = logging.getLogger("vip_worker.web.dashboard")
KEEPALIVE_S = 15.0
# The producer ticks this long after each interval's boundary: uvloop's timers (libuv's,
# in whole milliseconds) may wake a sleep slightly before its time by time.monotonic(),
# which would put the tick in the previous interval and serve its cached counts again.
TICK_MARGIN_S = 0.02


def frame(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class Hub:
    """The one producer of live updates and its subscribers.

    ``produce`` returns the update's data (a JSON-able dict); ``sleep`` waits one interval
    (injected by tests, which tick it by hand).
    """

    def __init__(self, produce: Callable[[], Awaitable[dict[str, Any]]], interval_s: float,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.produce = produce
        self.clock = clock
        self.interval_s = interval_s
        self.sleep = sleep
        self.version = 0
        self.latest: str | None = None
        self.subscribers = 0
        self.produced = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def publish(self, text: str) -> None:
        self.version += 1
        self.latest = text
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every subscriber waiting on this version

    async def run(self) -> None:
        """The producer: one update per interval while anyone listens, on the intervals'
        boundaries (aligned on the monotonic clock, as the queue-attributes cache's: each
        tick finds the last answers one interval old, so every update reads afresh)."""
        while self.subscribers:
            try:
                data = await self.produce()
            except Exception as exc:  # noqa: BLE001 (one failed refresh must not end the stream)
                log.warning("dashboard.refresh_failed", extra={"error": repr(exc)[:300]})
            else:
                self.produced += 1
                self.publish(frame("update", data, self.version + 1))
            await self.sleep(self.interval_s - self.clock() % self.interval_s + TICK_MARGIN_S)

    def _join(self) -> None:
        self.subscribers += 1
        if self._task is None or self._task.done():
            # idle -> producing: the first browser starts the one producer
            self._task = asyncio.ensure_future(self.run())

    def _leave(self) -> None:
        self.subscribers -= 1
        if not self.subscribers and self._task is not None:
            # producing -> idle: the last browser left; no reads until one comes back, and
            # then a fresh update first (the last one may be hours old by then)
            self._task.cancel()
            self._task = None
            self.latest = None

    async def subscribe(self, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
        """The frames one browser receives: the latest update at once (if the producer is
        running), then each newer one; a keepalive comment after ``keepalive_s`` without
        one."""
        self._join()
        try:
            seen = 0
            while True:
                if self.latest is not None and self.version != seen:
                    seen = self.version
                    yield self.latest
                    continue
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), keepalive_s)
                except TimeoutError:
                    yield ": keepalive\n\n"
        finally:
            self._leave()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Live:
    """The dashboard's shared state in one web process: the queue-attributes cache, the
    hub, and how one update is gathered (used by the pages too, so a reload and the stream
    show the same figures from the same reads)."""

    def __init__(self, dash, clock: Callable[[], datetime] = utc_now,
                 stats: QueueStats | None = None) -> None:
        settings = dash.settings
        self.dash = dash
        self.clock = clock
        self.stats = stats or QueueStats(settings.queues, sqs_reader_factory(settings),
                                         settings.dashboard_refresh_s)
        self.hub = Hub(self.update, settings.dashboard_refresh_s)
        # Where the dashboard is mounted, for the fragments' links: the pages' ``base``, as
        # the last browser to subscribe saw it (one web process serves one mount).
        self.base = "/dashboard"

    async def overview(self, now: datetime | None = None,
                       stale_ok: bool = False) -> dict[str, Any]:
        """The overview: counts through the shared cache (``stale_ok`` for a page load: see
        ``QueueStats.attributes``), one read of the "queue" buckets."""
        settings = self.dash.settings
        now = now or self.clock()
        since = now - timedelta(hours=settings.dashboard_history_h)
        counts = await self.stats.read(stale_ok)
        rows = await self.dash.call(self.dash.store.read_minutes, "queue", since)
        return overview.build(counts, rows, now, settings.dashboard_history_h,
                              settings.dashboard_rate_window_min)

    async def both(self, stale_ok: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """The overview and the fleet (whose backlog per instance needs the queues' counts)."""
        now = self.clock()
        doc = await self.overview(now, stale_ok)
        totals = doc["totals"]
        records = await self.dash.call(self.dash.store.daemons)
        return doc, fleet.build(records, now, totals["backlog"] if totals["complete"] else None)

    def fragment(self, name: str, **context: Any) -> str:
        return self.dash.templates.env.get_template(name).render(**context)

    async def update(self) -> dict[str, Any]:
        """One live update: the pages' live fragments, rendered once for every browser."""
        doc, fleet_doc = await self.both()
        newest = await jobs.newest(self.dash)
        base = self.base
        return {"at": doc["at"].isoformat(),
                "fragments": {"overview-live": self.fragment("_overview_live.html",
                                                             overview=doc, base=base),
                              "fleet-live": self.fragment("_fleet_live.html", fleet=fleet_doc,
                                                          base=base),
                              "jobs-live": self.fragment("_jobs_live.html", base=base,
                                                         **newest)}}


def shared(dash) -> Live:
    """This process's ``Live`` (made at first use, after any fork)."""
    found = dash.resources.get("live")
    if found is None:
        found = dash.resources["live"] = Live(dash)
    return found


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/events", name="events")
    async def events(request: Request, session: Viewer):
        """Auth: a dashboard session (any role). Server-Sent Events: the live fragments of
        the overview, the fleet page and the newest jobs, every ``dashboard_refresh_s``."""
        live = shared(dash)
        live.base = sessions.base_path(request)
        return StreamingResponse(live.hub.subscribe(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
