"""The fleet page (``/dashboard/fleet``) and its figures: every daemon the registry knows
(``store.daemons()``), and the autoscaling signal.

A daemon is "lost" by the registry's one rule, ``vip_worker.store.fleet.is_lost`` (its
last report older than three of its own intervals); a lost daemon shows as lost whatever
state it last reported. The backlog per instance is the queues' visible + in-flight
messages over the live daemons, counted by ``vip_worker.store.fleet.live`` (neither lost
nor stopped), the same count as the daemons' ``BacklogPerInstance`` EMF metric
(services/fleet.py ``live_daemons``). With no live daemon there is no figure ("-").
"""

# No ``from __future__ import annotations``: FastAPI reads the route's types, which name
# the dependency made inside add_routes.
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from vip_worker.store import fleet as registry
from vip_worker.web.dashboard.session import Session


def ago_text(seconds: float) -> str:
    """"4 s", "3 min", "2 h 5 min", "3 d 4 h"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d {hours % 24} h"


def seconds_since(at: Any, now: datetime) -> float | None:
    return (now - at).total_seconds() if isinstance(at, datetime) else None


def status_of(record: dict[str, Any], lost: bool) -> str:
    """What the page calls the daemon: lost wins over the state it last reported."""
    return "lost" if lost else str(record.get("state") or "running")


def daemon_row(record: dict[str, Any], now: datetime, lost: bool) -> dict[str, Any]:
    inflight = [int(n or 0) for n in record.get("inflight") or []]
    up_s = seconds_since(record.get("startedAt"), now)
    seen_s = seconds_since(record.get("lastSeen"), now)
    return {"daemon_id": str(record.get("daemonId") or record.get("_id") or ""),
            "hostname": record.get("hostname") or "?", "pid": record.get("pid"),
            "version": record.get("version") or "?", "pollers": record.get("pollers"),
            "inflight": inflight, "inflight_total": sum(inflight),
            "uptime": "-" if up_s is None else ago_text(up_s),
            "last_seen": "-" if seen_s is None else f"{ago_text(seen_s)} ago",
            "state": status_of(record, lost), "lost": lost}


def backlog_per_instance(backlog: int | None, live_daemons: int) -> float | None:
    """Visible + in flight over the live daemons; None with none (or no backlog known)."""
    if backlog is None or live_daemons <= 0:
        return None
    return backlog / live_daemons


def build(records: Sequence[dict[str, Any]], now: datetime,
          backlog: int | None) -> dict[str, Any]:
    """The fleet: ``daemons`` (hostname then pid; lost and stopped ones last), ``live``,
    the backlog and the backlog per instance."""
    rows = [daemon_row(r, now, registry.is_lost(r, now)) for r in records]
    rows.sort(key=lambda row: (row["lost"] or row["state"] == "stopped",
                               row["hostname"], row["pid"] or 0))
    count = len(registry.live(records, now))
    per = backlog_per_instance(backlog, count)
    return {"daemons": rows, "live": count, "lost": sum(1 for r in rows if r["lost"]),
            "backlog": backlog,
            "backlog_per_instance": None if per is None else round(per, 1),
            "backlog_per_instance_text": "-" if per is None else f"{per:.1f}"}


def add_routes(app, dash) -> None:
    from vip_worker.web.dashboard import live

    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/fleet", name="fleet")
    async def fleet_page(request: Request, session: Viewer):
        """Auth: a dashboard session (any role). Every daemon, and the backlog per instance."""
        _, doc = await live.shared(dash).both(stale_ok=True)
        return dash.render(request, "fleet.html", session, active="fleet", fleet=doc,
                           refresh_s=dash.settings.dashboard_refresh_s)
