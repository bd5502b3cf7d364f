"""The one way tests wait: poll a condition until it holds, or fail saying what was awaited.

Tests wait on events (a log line, queue state, a file), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05,
               message: str = "", *, fail_if: Callable[[], object] | None = None,
               details: Callable[[], str] | None = None) -> T:
    """Call ``predicate()`` every ``interval_s`` until it returns something truthy; return it.

    Raises ``AssertionError`` naming ``message`` (what was awaited) after ``timeout_s``, or
    as soon as ``fail_if()`` returns something truthy (e.g. "the daemon exited"), after
    one last look at ``predicate``. ``details()`` (a log tail, say) is added to the error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        stopped = fail_if() if fail_if is not None else None
        if stopped:
            result = predicate()  # the last state before whatever stopped it
            if result:
                return result
            raise AssertionError(failure(predicate, message, str(stopped), details))
        if time.monotonic() >= deadline:
            raise AssertionError(failure(predicate, message, f"timed out after {timeout_s:g} s",
                                         details))
        time.sleep(interval_s)


async def wait_until_async(predicate: Callable[[], T], timeout_s: float,
                           interval_s: float = 0.001, message: str = "") -> T:
    """``wait_until`` for a test running on an event loop: sleeps yield to the loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(failure(predicate, message, f"timed out after {timeout_s:g} s"))
        await asyncio.sleep(interval_s)


def failure(predicate: Callable, message: str, why: str,
            details: Callable[[], str] | None = None) -> str:
    what = message or getattr(predicate, "__qualname__", repr(predicate))
    text = f"{why} waiting for {what}"
    return f"{text}\n{details()}" if details is not None else text
