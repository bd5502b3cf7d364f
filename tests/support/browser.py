"""Helpers for the browser tests (tests/browser/): Debian's Chromium driven by Playwright.

Never Playwright's own browser download: ``chromium.launch(executable_path=CHROMIUM)``.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO = Path(__file__).resolve().parents[2]


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return (f"{CHROMIUM} is missing: install Debian's chromium package (`make test` "
                f"does, as root with apt)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[test]'"
    return None


def artifacts_dir() -> Path:
    """Where screenshots go: ``VIP_TEST_ARTIFACTS`` (default build/artifacts)."""
    path = Path(os.environ.get("VIP_TEST_ARTIFACTS") or REPO / "build" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page, name: str) -> Path:
    """A full-page PNG of ``page`` named ``name`` in the artifacts directory."""
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, url: str, key: str) -> None:
    """Sign in to the dashboard at ``url`` (the API's base URL) with ``key``."""
    page.goto(f"{url}/dashboard/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(lambda address: "/login" not in address)
