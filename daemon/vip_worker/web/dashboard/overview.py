"""The overview page (``/dashboard/overview``) and its figures: per queue its counts,
processing rate and ETA to clear, and the charts of the last hours, from the queue counts
(``queuestats``) and the "queue" series of per-minute buckets (``store.read_minutes``).
Pure functions: the caller reads SQS and the store once per refresh, for every browser
(``live.py``).

- processing rate: messages finished (succeeded + failed) per minute over the last
  ``dashboard_rate_window_min`` minutes, the current one included. A window that starts
  before the first finished message is measured from that minute (a batch that began two
  minutes ago is not averaged over five), and over one minute at least.
- ETA to clear: visible / rate, in minutes; None ("-") when the rate is 0.
- charts, per queue, one point a minute: throughput (succeeded + failed), failures
  (failed), job duration (duration_s_sum / duration_n; a gap without jobs), queue depth
  (the most messages visible seen in the minute; a gap when no daemon looked).
"""

# No ``from __future__ import annotations``: FastAPI reads the route's types, which name
# the dependency made inside add_routes.
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from markupsafe import Markup

from vip_worker.web.dashboard.charts import Series, line_chart
from vip_worker.web.dashboard.queuestats import QueueCounts
from vip_worker.web.dashboard.session import Session

MINUTE = timedelta(minutes=1)


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def minutes_between(since: datetime, until: datetime) -> list[datetime]:
    """Every minute from ``since``'s to ``until``'s, both included."""
    out, at = [], floor_minute(since)
    while at <= until:
        out.append(at)
        at += MINUTE
    return out


def by_queue(rows: Iterable[dict[str, Any]]) -> dict[str, dict[datetime, dict[str, Any]]]:
    """The bucket rows as {queue: {minute: row}}."""
    out: dict[str, dict[datetime, dict[str, Any]]] = {}
    for row in rows:
        queue = (row.get("labels") or {}).get("queue")
        if queue is not None:
            out.setdefault(queue, {})[floor_minute(row["minute"])] = row
    return out


def finished(row: dict[str, Any] | None) -> float:
    if not row:
        return 0.0
    return float(row.get("succeeded") or 0) + float(row.get("failed") or 0)


def processing_rate(minutes: dict[datetime, dict[str, Any]], now: datetime,
                    window_min: int) -> float:
    """Messages finished per minute (see the module's docstring); 0.0 without any."""
    start = floor_minute(now) - (window_min - 1) * MINUTE
    active = sorted(m for m, row in minutes.items() if start <= m <= now and finished(row))
    if not active:
        return 0.0
    total = sum(finished(minutes[m]) for m in active)
    span_min = max(1.0, (now - max(start, active[0])).total_seconds() / 60)
    return total / span_min


def eta_minutes(visible: int | None, rate_per_min: float) -> float | None:
    """Minutes to clear ``visible`` at ``rate_per_min``; None when unknown or rate is 0."""
    if visible is None or rate_per_min <= 0:
        return None
    return visible / rate_per_min


def eta_text(eta_min: float | None) -> str:
    """The seed's "15 minutes"; "-" for no estimate."""
    if eta_min is None:
        return "-"
    if eta_min == 0:
        return "0 minutes"
    if eta_min < 1:
        return "<1 minute"
    whole = round(eta_min)
    if whole < 120:
        return f"{whole} minute{'s' if whole != 1 else ''}"
    return f"{whole // 60} h {whole % 60} min"


def rate_text(rate_per_min: float) -> str:
    """The seed's "10 messages/minute" (one decimal under 10)."""
    shown = f"{rate_per_min:.1f}".rstrip("0").rstrip(".") if rate_per_min < 10 \
        else f"{rate_per_min:.0f}"
    return f"{shown} messages/minute"


def queue_row(counts: QueueCounts, minutes: dict[datetime, dict[str, Any]], now: datetime,
              window_min: int) -> dict[str, Any]:
    """One queue's line of the overview table (and of the live update)."""
    rate = processing_rate(minutes, now, window_min)
    eta = eta_minutes(counts.visible, rate)
    return {"name": counts.name, "visible": counts.visible, "in_flight": counts.in_flight,
            "delayed": counts.delayed, "dlq_name": counts.dlq_name,
            "dlq_depth": counts.dlq_depth, "error": counts.error,
            "rate_per_min": round(rate, 2), "rate_text": rate_text(rate),
            "eta_min": None if eta is None else round(eta, 1), "eta_text": eta_text(eta)}


def points(minutes: dict[datetime, dict[str, Any]], axis: Sequence[datetime],
           value) -> list[tuple[datetime, float | None]]:
    return [(m, value(minutes.get(m))) for m in axis]


def failed_count(row: dict[str, Any] | None) -> float:
    return float((row or {}).get("failed") or 0)


def mean_duration_s(row: dict[str, Any] | None) -> float | None:
    if not row or not row.get("duration_n"):
        return None
    return float(row.get("duration_s_sum") or 0) / float(row["duration_n"])


def depth_visible(row: dict[str, Any] | None) -> float | None:
    if not row or row.get("visible") is None:
        return None
    return float(row["visible"])


CHARTS = (("throughput", "Throughput", "messages/min", finished),
          ("failures", "Failures", "messages/min", failed_count),
          ("duration", "Job duration", "s", mean_duration_s),
          ("depth", "Queue depth", "visible", depth_visible))


def charts(names: Sequence[str], buckets: dict[str, dict[datetime, dict[str, Any]]],
           since: datetime, until: datetime) -> dict[str, Markup]:
    """The four charts, each with one line per queue, as inline SVG."""
    axis = minutes_between(since, until)
    return {key: line_chart(title, [Series(name, points(buckets.get(name, {}), axis, value))
                                    for name in names], since, until, unit)
            for key, title, unit, value in CHARTS}


def build(counts: Sequence[QueueCounts], bucket_rows: Iterable[dict[str, Any]],
          now: datetime, history_h: float, window_min: int) -> dict[str, Any]:
    """The whole overview: ``queues`` (rows), ``totals``, ``charts`` (SVG) and the time."""
    buckets = by_queue(bucket_rows)
    rows = [queue_row(c, buckets.get(c.name, {}), now, window_min) for c in counts]
    since = floor_minute(now - timedelta(hours=history_h))
    known = [r for r in rows if r["visible"] is not None]
    totals = {"visible": sum(r["visible"] for r in known),
              "in_flight": sum(r["in_flight"] for r in known),
              "backlog": sum(c.backlog or 0 for c in counts),
              "complete": len(known) == len(rows),
              "rate_per_min": round(sum(r["rate_per_min"] for r in rows), 2)}
    return {"queues": rows, "totals": totals, "at": now,
            "charts": charts([c.name for c in counts], buckets, since, now)}


def add_routes(app, dash) -> None:
    from vip_worker.web.dashboard import live

    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/overview", name="overview")
    async def overview_page(request: Request, session: Viewer):
        """Auth: a dashboard session (any role). The queues, their counts and charts."""
        doc = await live.shared(dash).overview(stale_ok=True)
        return dash.render(request, "overview.html", session, active="overview",
                           overview=doc, refresh_s=dash.settings.dashboard_refresh_s)
