"""Live updates: one producer per process however many browsers listen; fan-out; idle
without listeners; a slow browser skips to the newest update."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.wait import wait_until_async
from vip_worker.web.dashboard.live import TICK_MARGIN_S, Hub


class Ticker:
    """The hub's sleep, advanced by hand: ``tick()`` ends one interval."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0

    async def __call__(self, _interval_s: float) -> None:
        self.waiting += 1
        await self.event.wait()
        self.event = asyncio.Event()

    def tick(self) -> None:
        self.waiting = 0
        self.event.set()


class Source:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self) -> dict:
        self.calls += 1
        if self.fail:
            raise RuntimeError("store down")
        return {"n": self.calls}


def data(text: str) -> dict:
    line = next(x for x in text.splitlines() if x.startswith("data: "))
    return json.loads(line[len("data: "):])


async def take(stream, count: int) -> list[dict]:
    return [data(await anext(stream)) for _ in range(count)]


def test_twenty_browsers_one_producer_call_per_interval():
    async def scenario() -> tuple[int, list[list[dict]]]:
        source, ticker = Source(), Ticker()
        hub = Hub(source, 5.0, sleep=ticker)
        streams = [hub.subscribe() for _ in range(20)]
        firsts = [asyncio.ensure_future(take(s, 1)) for s in streams]
        got = [await f for f in firsts]
        for _ in range(3):
            await wait_until_async(lambda: ticker.waiting, 5, message="the producer sleeps")
            nexts = [asyncio.ensure_future(take(s, 1)) for s in streams]
            ticker.tick()
            for i, f in enumerate(nexts):
                got[i] += await f
        for s in streams:
            await s.aclose()
        await hub.close()
        return source.calls, got

    calls, got = asyncio.run(scenario())
    assert calls == 4  # not 80: every browser got the same four updates
    assert all(g == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}] for g in got)


def test_no_listener_no_reads_and_the_producer_stops_with_the_last_one():
    async def scenario() -> None:
        source, ticker = Source(), Ticker()
        hub = Hub(source, 5.0, sleep=ticker)
        await asyncio.sleep(0)
        assert source.calls == 0  # nobody listens: nothing is read
        stream = hub.subscribe()
        assert data(await anext(stream)) == {"n": 1}
        await stream.aclose()
        assert hub.subscribers == 0 and hub._task is None
        for _ in range(3):
            await asyncio.sleep(0)
        assert source.calls == 1  # stopped: nothing more was read
        again = hub.subscribe()  # a new browser restarts it, and gets a fresh update
        assert data(await anext(again)) == {"n": 2}
        assert source.calls == 2
        await again.aclose()
        await hub.close()

    asyncio.run(scenario())


def test_a_slow_browser_skips_to_the_newest_update():
    async def scenario() -> list[dict]:
        source, ticker = Source(), Ticker()
        hub = Hub(source, 5.0, sleep=ticker)
        fast, slow = hub.subscribe(), hub.subscribe()
        await take(fast, 1)
        await take(slow, 1)
        for _ in range(3):  # the slow one reads nothing meanwhile
            await wait_until_async(lambda: ticker.waiting, 5, message="the producer sleeps")
            pending = asyncio.ensure_future(take(fast, 1))
            ticker.tick()
            await pending
        got = await take(slow, 1)
        await fast.aclose()
        await slow.aclose()
        await hub.close()
        return got

    assert asyncio.run(scenario()) == [{"n": 4}]


def test_a_failed_refresh_is_skipped_and_the_stream_goes_on():
    async def scenario() -> list[dict]:
        source, ticker = Source(), Ticker()
        source.fail = True
        hub = Hub(source, 5.0, sleep=ticker)
        stream = hub.subscribe(keepalive_s=0.01)
        assert await anext(stream) == ": keepalive\n\n"  # nothing yet, but alive
        source.fail = False
        await wait_until_async(lambda: ticker.waiting, 5, message="the producer sleeps")
        ticker.tick()
        got = await take(stream, 1)
        await stream.aclose()
        await hub.close()
        return got

    assert asyncio.run(scenario()) == [{"n": 2}]


def test_frames_are_server_sent_events_with_increasing_ids():
    async def scenario() -> list[str]:
        source, ticker = Source(), Ticker()
        hub = Hub(source, 5.0, sleep=ticker)
        stream = hub.subscribe()
        first = await anext(stream)
        await wait_until_async(lambda: ticker.waiting, 5, message="the producer sleeps")
        ticker.tick()
        second = await anext(stream)
        await stream.aclose()
        await hub.close()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert first.startswith("id: 1\nevent: update\ndata: ") and first.endswith("\n\n")
    assert second.startswith("id: 2\n")


def test_the_producer_ticks_on_the_intervals_boundaries():
    async def scenario() -> list[float]:
        slept: list[float] = []
        gate = asyncio.Event()

        async def sleep(delay_s: float) -> None:
            slept.append(delay_s)
            await gate.wait()

        hub = Hub(Source(), 5.0, sleep=sleep, clock=lambda: 1002.25)
        stream = hub.subscribe()
        await anext(stream)
        await wait_until_async(lambda: slept, 5, message="the producer sleeps")
        await stream.aclose()
        await hub.close()
        return slept

    # until just after 1005.0, not 1002.25 + 5
    assert asyncio.run(scenario()) == [pytest.approx(2.75 + TICK_MARGIN_S)]


def test_an_answer_is_fresh_until_its_interval_ends():
    from tests.web.dashboard.test_queuestats import URLS, Clock, make, sqs_with_dlq

    sqs, clock = sqs_with_dlq(), Clock()
    stats = make(sqs, clock, refresh_s=5.0)
    clock.now = 1004.9  # late in the interval [1000, 1005)

    async def scenario() -> None:
        await stats.attributes(URLS["articles"])
        clock.now = 1005.0  # the next interval: read afresh, though 0.1 s old
        await stats.attributes(URLS["articles"])
        clock.now = 1009.99
        await stats.attributes(URLS["articles"])

    asyncio.run(scenario())
    assert sqs.calls[URLS["articles"]] == 2
