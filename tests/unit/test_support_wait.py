"""The tests' one wait helper: it returns what the condition gave, or fails naming the wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.wait import wait_until, wait_until_async


def test_returns_the_first_truthy_value():
    values = iter([0, None, [], "ready"])
    assert wait_until(lambda: next(values), 5, interval_s=0) == "ready"


def test_a_timeout_names_what_was_awaited_and_adds_the_details():
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s waiting for the queue"
                                             r"(.|\n)*last lines"):
        wait_until(lambda: False, 0.05, interval_s=0.01, message="the queue",
                   details=lambda: "last lines")


def test_fail_if_stops_the_wait_at_once_after_one_last_look():
    started = time.monotonic()
    with pytest.raises(AssertionError, match="the daemon exited waiting for ready"):
        wait_until(lambda: False, 30, message="ready", fail_if=lambda: "the daemon exited")
    assert time.monotonic() - started < 1
    looks = iter([False, "seen last"])
    assert wait_until(lambda: next(looks), 30, fail_if=lambda: "exited") == "seen last"


def test_the_async_wait_yields_to_the_loop():
    async def go():
        done = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, done.set)
        await wait_until_async(done.is_set, 5, message="the timer")
        with pytest.raises(AssertionError, match="waiting for never"):
            await wait_until_async(lambda: False, 0.02, message="never")
    asyncio.run(go())
