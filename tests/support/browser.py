"""Helpers for the browser tests (tests/browser/): Debian's Chromium driven by Playwright.

Never Playwright's own browser download: ``chromium.launch(executable_path=CHROMIUM)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.web import Api, WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO = Path(__file__).resolve().parents[2]
BUNDLED_PLUGINS = str(REPO / "plugins")


@dataclass
class Stack:
    """What ``dashboard_stack`` started: ``web`` (an ``Api``: url, settings, store, keys by
    role: admin, backend, viewer), the daemons, the stub service, the queue's urls."""

    web: Api
    daemons: list[Any]
    generation: Any
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.web.url

    @property
    def store(self):
        return self.web.store


def start_web(state_dir: str, queue_url: str, sqs_endpoint: str) -> Api:
    """``vip-worker web`` in a thread on the daemons' state directory, with keys."""
    from vip_worker import config
    from vip_worker.pipeline.producer import Producer
    from vip_worker.web.keys import create_key

    keys_file = os.path.join(state_dir, "web-keys.json")
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": state_dir,
                                    "ARTICLES_QUEUE_URL": queue_url,
                                    "AWS_ENDPOINT_URL_SQS": sqs_endpoint},
                           require_queues=False).with_values(web_keys_file=keys_file)
    keys = {role: create_key(keys_file, f"test-{role}", role)[1]
            for role in ("admin", "backend", "viewer")}
    producer = Producer(settings)
    server = WebServer(settings, producer).start()
    return Api(server, settings, producer.store, keys)


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
