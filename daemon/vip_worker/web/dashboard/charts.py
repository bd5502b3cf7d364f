"""The dashboard's charts: per-minute series drawn on the server as inline SVG.

An SVG string in the page needs no JavaScript, no chart library and no Node build: the
charts show on a plain reload, and the live script only swaps the updated fragment in.
Each chart has a time axis (UTC, ``HH:MM`` at both ends and the middle), a value axis
starting at 0 with a rounded top, one polyline per series (a ``None`` value is a gap:
no data for that minute), a legend, and says "no data yet" when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 22, 22
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
AXIS = "#6b7280"


@dataclass(frozen=True, slots=True)
class Series:
    """One line: ``points`` are (minute, value), oldest first; None is a gap."""

    label: str
    points: Sequence[tuple[datetime, float | None]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def number(value: float) -> str:
    """An axis label: 3, 2.5, 1.2k, 3M."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{round(value, 2):g}"


def runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of points (a None value ends one)."""
    out: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in points:
        if y is None:
            if current:
                out.append(current)
            current = []
        else:
            current.append((x, y))
    if current:
        out.append(current)
    return out


def line_chart(title: str, series: Sequence[Series], since: datetime, until: datetime,
               unit: str = "", width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """An inline ``<svg>`` of ``series`` between ``since`` and ``until``."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    span_s = max((until - since).total_seconds(), 1.0)
    values = [v for s in series for _, v in s.points if v is not None]
    top = nice_ceiling(max(values, default=0.0))

    def x_of(at: datetime) -> float:
        return round(LEFT + plot_w * (at - since).total_seconds() / span_s, 1)

    def y_of(value: float) -> float:
        return round(TOP + plot_h * (1 - min(value, top) / top), 1)

    label = f"{title} ({unit})" if unit else title
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="100%" '
             f'preserveAspectRatio="xMidYMid meet" aria-label="{escape(label)}">',
             f"<title>{escape(label)}</title>",
             f'<text x="{LEFT}" y="14" font-size="12" font-weight="bold">{escape(label)}</text>']
    parts += axes(since, until, top, width, height)
    if not values:
        parts.append(f'<text class="chart-empty" x="{LEFT + plot_w / 2}" '
                     f'y="{TOP + plot_h / 2}" font-size="12" text-anchor="middle" '
                     f'fill="{AXIS}">no data yet</text>')
    legend_x = width - RIGHT
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        pixels = [(x_of(at), None if v is None else y_of(v)) for at, v in one.points]
        for stretch in runs(pixels):
            if len(stretch) == 1:
                (x, y), = stretch
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{color}"/>')
            else:
                coords = " ".join(f"{x},{y}" for x, y in stretch)
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                             f'data-series="{escape(one.label)}" points="{coords}"/>')
        parts.append(f'<text x="{legend_x}" y="14" font-size="11" text-anchor="end" '
                     f'fill="{color}">{escape(one.label)}</text>')
        legend_x -= 8 + 7 * len(one.label)
    parts.append("</svg>")
    return Markup("".join(parts))


def axes(since: datetime, until: datetime, top: float, width: int, height: int) -> list[str]:
    """The two axes, three value ticks (0, half, top) and three time ticks."""
    bottom_y, right_x = height - BOTTOM, width - RIGHT
    out = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom_y}" stroke="{AXIS}"/>',
           f'<line x1="{LEFT}" y1="{bottom_y}" x2="{right_x}" y2="{bottom_y}" '
           f'stroke="{AXIS}"/>']
    plot_h = bottom_y - TOP
    for fraction in (0.0, 0.5, 1.0):
        y = round(bottom_y - plot_h * fraction, 1)
        out.append(f'<text class="y-tick" x="{LEFT - 4}" y="{y + 4}" font-size="10" '
                   f'text-anchor="end" fill="{AXIS}">{number(top * fraction)}</text>')
        if fraction:
            out.append(f'<line x1="{LEFT}" y1="{y}" x2="{right_x}" y2="{y}" '
                       f'stroke="#e5e7eb"/>')
    middle = since + (until - since) / 2
    for at, x, anchor in ((since, LEFT, "start"), (middle, (LEFT + right_x) / 2, "middle"),
                          (until, right_x, "end")):
        out.append(f'<text class="x-tick" x="{x}" y="{height - 6}" font-size="10" '
                   f'text-anchor="{anchor}" fill="{AXIS}">{at.strftime("%H:%M")}</text>')
    return out
