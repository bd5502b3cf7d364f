"""The browser fixtures leave no event loop running behind them: Playwright's sync API
marks its loop running in this thread while it is started, and asyncio.run() in any test
after it would fail ("cannot be called from a running event loop")."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.slow


async def answer() -> int:
    return 42


@pytest.mark.parametrize("round_", [1, 2])
def test_asyncio_runs_after_a_browser_test(request, round_):
    if round_ == 1:
        page = request.getfixturevalue("page")  # starts and, at teardown, stops Playwright
        page.set_content("<p>hello</p>")
        assert page.inner_text("p") == "hello"
    else:
        assert asyncio.run(answer()) == 42
