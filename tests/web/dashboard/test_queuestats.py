"""The shared queue-attributes cache: at most one GetQueueAttributes per queue per interval,
single-flight for concurrent readers, failures kept for the interval too."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass

import botocore.exceptions

from tests.support.wait import wait_until_async
from vip_worker.web.dashboard.queuestats import QueueStats

DLQ_ARN = "arn:aws:sqs:us-east-1:000000000000:articles-dlq"
URLS = {"articles": "http://127.0.0.1:1/000000000000/articles",
        "images": "http://127.0.0.1:1/000000000000/images",
        "articles-dlq": "http://127.0.0.1:1/000000000000/articles-dlq"}


@dataclass(frozen=True)
class Q:
    name: str
    url: str
    dlq_url: str = ""


class CountingSqs:
    """A blocking reader that counts calls per URL; ``gate`` holds calls until set."""

    def __init__(self, attrs: dict[str, dict[str, str]]) -> None:
        self.attrs = attrs
        self.calls: Counter[str] = Counter()
        self.url_lookups: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail: Exception | None = None

    def queue_attributes(self, queue_url, names):
        self.calls[queue_url] += 1
        self.started.set()
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return dict(self.attrs[queue_url])

    def queue_url(self, name, owner_account=""):
        self.url_lookups[name] += 1
        return URLS[name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sqs_with_dlq() -> CountingSqs:
    return CountingSqs({
        URLS["articles"]: {"ApproximateNumberOfMessages": "150",
                           "ApproximateNumberOfMessagesNotVisible": "4",
                           "ApproximateNumberOfMessagesDelayed": "2",
                           "RedrivePolicy": json.dumps({"deadLetterTargetArn": DLQ_ARN,
                                                        "maxReceiveCount": 3})},
        URLS["images"]: {"ApproximateNumberOfMessages": "0",
                         "ApproximateNumberOfMessagesNotVisible": "0",
                         "ApproximateNumberOfMessagesDelayed": "0"},
        URLS["articles-dlq"]: {"ApproximateNumberOfMessages": "7",
                               "ApproximateNumberOfMessagesNotVisible": "1"},
    })


def make(sqs: CountingSqs, clock: Clock, refresh_s: float = 5.0) -> QueueStats:
    queues = [Q("articles", URLS["articles"]), Q("images", URLS["images"])]
    return QueueStats(queues, lambda: sqs, refresh_s, clock=clock)


def test_counts_and_the_dlq_from_its_redrive_policy():
    sqs, clock = sqs_with_dlq(), Clock()
    rows = asyncio.run(make(sqs, clock).read())
    articles, images = rows
    assert (articles.visible, articles.in_flight, articles.delayed) == (150, 4, 2)
    assert (articles.dlq_name, articles.dlq_depth, articles.error) == ("articles-dlq", 8, None)
    assert articles.backlog == 154
    assert (images.visible, images.dlq_name, images.dlq_depth) == (0, None, None)


def test_one_call_per_queue_per_interval_then_a_fresh_one():
    sqs, clock = sqs_with_dlq(), Clock()
    stats = make(sqs, clock, refresh_s=5.0)

    async def readers() -> None:
        for _ in range(3):
            await stats.read()
        clock.now += 4.9
        await stats.read()
        assert all(n == 1 for n in sqs.calls.values()), sqs.calls
        clock.now += 0.1  # the interval has passed
        await stats.read()

    asyncio.run(readers())
    assert sqs.calls == {URLS["articles"]: 2, URLS["images"]: 2, URLS["articles-dlq"]: 2}
    assert sqs.url_lookups == {"articles-dlq": 1}  # the DLQ's URL is looked up once


def test_concurrent_readers_wait_for_the_one_call_in_progress():
    sqs, clock = sqs_with_dlq(), Clock()
    sqs.gate.clear()
    stats = make(sqs, clock)

    async def twenty_browsers() -> list:
        readers = [asyncio.ensure_future(stats.attributes(URLS["articles"]))
                   for _ in range(20)]
        await wait_until_async(sqs.started.is_set, 10, message="the first call started")
        sqs.gate.set()
        return await asyncio.gather(*readers)

    answers = asyncio.run(twenty_browsers())
    assert sqs.calls[URLS["articles"]] == 1
    assert {a["ApproximateNumberOfMessages"] for a in answers} == {"150"}


def test_a_reader_that_goes_away_does_not_cancel_the_others_call():
    sqs, clock = sqs_with_dlq(), Clock()
    sqs.gate.clear()
    stats = make(sqs, clock)

    async def scenario() -> dict:
        first = asyncio.ensure_future(stats.attributes(URLS["articles"]))
        await wait_until_async(sqs.started.is_set, 10, message="the call started")
        second = asyncio.ensure_future(stats.attributes(URLS["articles"]))
        await asyncio.sleep(0)
        first.cancel()  # a closed page
        sqs.gate.set()
        return await second

    assert asyncio.run(scenario())["ApproximateNumberOfMessages"] == "150"
    assert sqs.calls[URLS["articles"]] == 1


def test_a_failure_is_a_row_error_and_is_kept_for_the_interval():
    sqs, clock = sqs_with_dlq(), Clock()
    sqs.fail = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetQueueAttributes")
    stats = make(sqs, clock)

    async def scenario() -> list:
        first = await stats.read()
        again = await stats.read()
        assert again == first
        clock.now += 5
        sqs.fail = None
        return await stats.read()

    rows = asyncio.run(scenario())
    assert sqs.calls[URLS["articles"]] == 2
    assert rows[0].error is None and rows[0].visible == 150


def test_failure_rows_name_the_error():
    sqs, clock = sqs_with_dlq(), Clock()
    sqs.fail = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    rows = asyncio.run(make(sqs, clock).read())
    assert rows[0].visible is None and rows[0].backlog is None
    assert "EndpointConnectionError" in rows[0].error


def test_the_dlq_url_setting_wins_over_the_redrive_policy():
    sqs, clock = sqs_with_dlq(), Clock()
    stats = QueueStats([Q("articles", URLS["articles"], URLS["articles-dlq"])],
                       lambda: sqs, 5.0, clock=clock)
    (row,) = asyncio.run(stats.read())
    assert row.dlq_depth == 8 and not sqs.url_lookups


def test_the_client_is_made_once_and_only_when_first_read():
    sqs, clock = sqs_with_dlq(), Clock()
    made = []
    stats = QueueStats([Q("articles", URLS["articles"]), Q("images", URLS["images"])],
                       lambda: made.append(1) or sqs, 5.0, clock=clock)
    assert made == []
    asyncio.run(stats.read())
    assert made == [1]


def test_a_page_load_takes_last_intervals_answer_and_refreshes_in_the_background():
    sqs, clock = sqs_with_dlq(), Clock()
    stats = make(sqs, clock)

    async def scenario() -> None:
        await stats.attributes(URLS["articles"])
        sqs.attrs[URLS["articles"]]["ApproximateNumberOfMessages"] = "99"
        sqs.gate.clear()  # SQS is slow now
        clock.now += 5  # the next interval
        page = await stats.attributes(URLS["articles"], stale_ok=True)
        assert page["ApproximateNumberOfMessages"] == "150"  # at once, not after SQS
        assert sqs.calls[URLS["articles"]] == 2 or URLS["articles"] in stats._pending
        sqs.gate.set()
        fresh = await stats.attributes(URLS["articles"])  # the producer: waits for it
        assert fresh["ApproximateNumberOfMessages"] == "99"

    asyncio.run(scenario())
    assert sqs.calls[URLS["articles"]] == 2  # the background refresh was the one call


def test_a_page_load_waits_when_the_answer_is_older_than_two_intervals():
    sqs, clock = sqs_with_dlq(), Clock()
    stats = make(sqs, clock)

    async def scenario() -> str:
        await stats.attributes(URLS["articles"])
        sqs.attrs[URLS["articles"]]["ApproximateNumberOfMessages"] = "99"
        clock.now += 10  # two intervals on: too old to show
        return (await stats.attributes(URLS["articles"], stale_ok=True))[
            "ApproximateNumberOfMessages"]

    assert asyncio.run(scenario()) == "99"


def test_once_the_dlq_is_known_queue_and_dlq_are_asked_at_once():
    sqs, clock = sqs_with_dlq(), Clock()
    stats = make(sqs, clock)
    queue = stats.queues[0]

    async def scenario() -> None:
        await stats.read_queue(queue)  # learns the DLQ from the RedrivePolicy
        clock.now += 5
        sqs.gate.clear()
        reading = asyncio.ensure_future(stats.read_queue(queue))
        # both calls are in progress before either has answered
        await wait_until_async(lambda: sqs.calls[URLS["articles"]] == 2
                               and sqs.calls[URLS["articles-dlq"]] == 2, 10,
                               message="the queue's and the DLQ's calls both started")
        sqs.gate.set()
        row = await reading
        assert row.dlq_depth == 8

    asyncio.run(scenario())
