"""The overview's arithmetic: processing rate, ETA to clear (the seed's figures), chart points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vip_worker.web.dashboard import overview
from vip_worker.web.dashboard.queuestats import QueueCounts

NOON = datetime(2026, 12, 4, 12, 5, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def bucket(queue: str, minute: datetime, **values) -> dict:
    return {"series": "queue", "labels": {"queue": queue}, "minute": minute, **values}


def steady(queue: str, per_min: int, first: datetime, last: datetime) -> list[dict]:
    rows, at = [], first
    while at <= last:
        rows.append(bucket(queue, at, succeeded=per_min - 1, failed=1))
        at += MIN
    return rows


def test_the_seeds_figures_150_messages_at_10_a_minute_clear_in_15_minutes():
    rows = steady("articles", 10, NOON - 10 * MIN, NOON - MIN)
    doc = overview.build([QueueCounts("articles", "u", 150, 0, 0)], rows, NOON, 3, 5)
    (row,) = doc["queues"]
    assert row["rate_per_min"] == 10
    assert row["rate_text"] == "10 messages/minute"
    assert row["eta_min"] == 15
    assert row["eta_text"] == "15 minutes"


def test_the_current_partial_minute_counts_over_the_time_it_has_run():
    minutes = overview.by_queue(steady("q", 10, NOON - 4 * MIN, NOON - MIN)
                                + [bucket("q", NOON, succeeded=5)])["q"]
    assert overview.processing_rate(minutes, NOON + timedelta(seconds=30), 5) == 10


def test_a_batch_that_began_recently_is_not_averaged_over_the_whole_window():
    minutes = overview.by_queue([bucket("q", NOON - 2 * MIN, succeeded=20),
                                 bucket("q", NOON - MIN, succeeded=20)])["q"]
    assert overview.processing_rate(minutes, NOON, 5) == 20  # 40 in 2 minutes, not in 5
    # ...and a burst in the very first seconds is spread over one minute at least
    burst = overview.by_queue([bucket("q", NOON, succeeded=7)])["q"]
    assert overview.processing_rate(burst, NOON + timedelta(seconds=3), 5) == 7


def test_minutes_before_the_window_do_not_count():
    minutes = overview.by_queue([bucket("q", NOON - 30 * MIN, succeeded=500)])["q"]
    assert overview.processing_rate(minutes, NOON, 5) == 0.0


def test_no_rate_means_no_eta():
    assert overview.eta_minutes(150, 0.0) is None
    assert overview.eta_text(None) == "-"
    assert overview.eta_minutes(None, 10) is None
    doc = overview.build([QueueCounts("q", "u", 3, 0, 0)], [], NOON, 1, 5)
    assert doc["queues"][0]["eta_text"] == "-"
    assert doc["queues"][0]["rate_text"] == "0 messages/minute"


@pytest.mark.parametrize("eta, text", [(0, "0 minutes"), (0.4, "<1 minute"), (1, "1 minute"),
                                       (14.6, "15 minutes"), (125, "2 h 5 min")])
def test_eta_text(eta, text):
    assert overview.eta_text(eta) == text


def test_rate_text_keeps_one_decimal_under_ten():
    assert overview.rate_text(2.25) == "2.2 messages/minute"
    assert overview.rate_text(37.6) == "38 messages/minute"


def test_chart_points_duration_is_a_mean_and_missing_minutes_are_gaps_or_zero():
    rows = [bucket("q", NOON - 2 * MIN, succeeded=2, failed=1, duration_s_sum=30.0,
                   duration_n=3, visible=40),
            bucket("q", NOON, succeeded=1, duration_s_sum=5.0, duration_n=1, visible=12)]
    minutes = overview.by_queue(rows)["q"]
    axis = overview.minutes_between(NOON - 2 * MIN, NOON)
    assert overview.points(minutes, axis, overview.finished) == [
        (NOON - 2 * MIN, 3.0), (NOON - MIN, 0.0), (NOON, 1.0)]
    assert [v for _, v in overview.points(minutes, axis, overview.mean_duration_s)] == [
        10.0, None, 5.0]
    assert [v for _, v in overview.points(minutes, axis, overview.depth_visible)] == [
        40.0, None, 12.0]
    assert [v for _, v in overview.points(minutes, axis, overview.failed_count)] == [
        1.0, 0.0, 0.0]


def test_build_has_four_charts_with_a_line_per_queue_and_totals():
    rows = (steady("articles", 4, NOON - 5 * MIN, NOON - MIN)
            + steady("images", 2, NOON - 5 * MIN, NOON - MIN))
    counts = [QueueCounts("articles", "u", 10, 2, 0), QueueCounts("images", "u", 3, 1, 0),
              QueueCounts("broken", "u", error="AccessDenied: no")]
    doc = overview.build(counts, rows, NOON, 1, 5)
    assert set(doc["charts"]) == {"throughput", "failures", "duration", "depth"}
    assert doc["charts"]["throughput"].count('data-series="articles"') == 1
    assert doc["totals"] == {"visible": 13, "in_flight": 3, "backlog": 16, "complete": False,
                             "rate_per_min": 6.0}
    assert doc["queues"][2]["error"] == "AccessDenied: no"
    assert doc["queues"][2]["eta_text"] == "-"


def test_rows_of_other_series_labels_are_ignored():
    rows = [{"series": "queue", "labels": {}, "minute": NOON, "succeeded": 9}]
    assert overview.by_queue(rows) == {}
