"""Without Debian's Chromium the browser tests skip and say why (not slow: no browser)."""

from __future__ import annotations

from tests.support import browser


def test_a_missing_chromium_is_named_in_the_skip_reason(monkeypatch):
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    reason = browser.why_no_browser()
    assert reason and "/nonexistent/chromium is missing" in reason and "make test" in reason


def test_the_artifacts_directory_follows_vip_test_artifacts(monkeypatch, tmp_path):
    monkeypatch.setenv("VIP_TEST_ARTIFACTS", str(tmp_path / "shots"))
    assert browser.artifacts_dir() == tmp_path / "shots" and (tmp_path / "shots").is_dir()
