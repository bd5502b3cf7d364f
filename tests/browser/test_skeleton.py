"""The dashboard in Debian's Chromium: sign in with an admin key, move between the pages."""

from __future__ import annotations

import pytest

from tests.support.browser import screenshot, sign_in

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)
def test_an_admin_signs_in_and_reaches_every_page(web_api, page):
    api = web_api()
    page.goto(f"{api.url}/dashboard/jobs")
    assert "/dashboard/login" in page.url  # nothing shown before signing in
    screenshot(page, "login")
    sign_in(page, api.url, api.keys["admin"])
    for label, path in (("Jobs", "/dashboard/jobs"), ("Dead letters", "/dashboard/dlq"),
                        ("Fleet", "/dashboard/fleet"), ("Overview", "/dashboard/overview")):
        page.click(f"header nav >> text={label}")
        page.wait_for_url(f"**{path}")
        assert page.locator("h1").inner_text() == label
    page.click("text=Sign out")
    page.wait_for_url("**/dashboard/login")
