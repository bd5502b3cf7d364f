"""The server-side SVG charts: points placed on the axes, gaps, empty data, escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from vip_worker.web.dashboard import charts
from vip_worker.web.dashboard.charts import Series, line_chart

SINCE = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(minutes=10)
NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))  # well-formed XML, or this raises


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter("{http://www.w3.org/2000/svg}polyline")]


def test_points_span_the_plot_from_since_to_until_and_zero_to_the_top():
    series = Series("articles", [(SINCE, 0.0), (SINCE + timedelta(minutes=5), 5.0),
                                 (UNTIL, 10.0)])
    root = parse(line_chart("Throughput", [series], SINCE, UNTIL, width=600, height=170))
    (line,) = polylines(root)
    left, right = charts.LEFT, 600 - charts.RIGHT
    top, bottom = charts.TOP, 170 - charts.BOTTOM
    assert line == [(left, bottom), ((left + right) / 2, (top + bottom) / 2), (right, top)]


def test_axes_labels_value_ticks_and_times():
    root = parse(line_chart("Depth", [Series("q", [(SINCE, 37.0)])], SINCE, UNTIL, "visible"))
    texts = {t.get("class"): [] for t in root.iter("{http://www.w3.org/2000/svg}text")}
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        texts[t.get("class")].append(t.text)
    assert texts["y-tick"] == ["0", "25", "50"]  # 37 rounds up to a top of 50
    assert texts["x-tick"] == ["12:00", "12:05", "12:10"]
    assert root.find("svg:title", NS).text == "Depth (visible)"
    assert len(root.findall("svg:line", NS)) >= 2  # the two axes


def test_a_none_value_breaks_the_line_and_a_lone_point_is_a_dot():
    points = [(SINCE + timedelta(minutes=i), v)
              for i, v in enumerate([1.0, 2.0, None, 3.0, None, 4.0, 4.0])]
    root = parse(line_chart("Duration", [Series("q", points)], SINCE, UNTIL))
    assert [len(line) for line in polylines(root)] == [2, 2]
    assert len(root.findall("svg:circle", NS)) == 1


def test_empty_data_draws_axes_and_says_so():
    for series in ([], [Series("q", [(SINCE, None), (UNTIL, None)])]):
        svg = str(line_chart("Failures", series, SINCE, UNTIL))
        root = parse(svg)
        assert polylines(root) == []
        assert "no data yet" in svg
        assert [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")
                if t.get("class") == "y-tick"] == ["0", "0.5", "1"]


def test_all_zero_values_are_drawn_on_the_axis_not_as_empty():
    svg = str(line_chart("Failures", [Series("q", [(SINCE, 0.0), (UNTIL, 0.0)])],
                         SINCE, UNTIL))
    assert "no data yet" not in svg
    assert len(polylines(parse(svg))) == 1


def test_one_line_per_series_with_its_own_colour_and_legend():
    root = parse(line_chart("T", [Series("articles", [(SINCE, 1.0), (UNTIL, 2.0)]),
                                  Series("images", [(SINCE, 2.0), (UNTIL, 1.0)])],
                            SINCE, UNTIL))
    lines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    assert [line.get("data-series") for line in lines] == ["articles", "images"]
    assert len({line.get("stroke") for line in lines}) == 2


def test_labels_are_escaped():
    svg = str(line_chart("<b>", [Series("<script>x</script>", [(SINCE, 1.0)])], SINCE, UNTIL))
    assert "<script>" not in svg and "<b>" not in svg
    parse(svg)


@pytest.mark.parametrize("value, top", [(0, 1), (0.3, 0.5), (1, 1), (1.1, 2), (2.2, 2.5),
                                        (7, 10), (37, 50), (150, 200), (1001, 2000)])
def test_nice_ceiling(value, top):
    assert charts.nice_ceiling(value) == pytest.approx(top)


def test_number_labels():
    assert [charts.number(v) for v in (0, 2.5, 1500, 3_000_000)] == ["0", "2.5", "1.5k", "3M"]
    assert re.fullmatch(r"0\.33", charts.number(1 / 3))
