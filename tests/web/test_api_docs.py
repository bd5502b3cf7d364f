"""Every route of the job API has a heading in docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

from vip_worker import config
from vip_worker.web.app import create_app

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SERVED_BY_FASTAPI = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_every_route_has_a_heading_in_api_md(tmp_path):
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False)
    app = create_app(settings)
    headings = set(re.findall(r"^#{2,4} `([A-Z]+ \S+)`", API_MD.read_text(), re.MULTILINE))
    routes = {f"{method} {route.path}" for route in app.routes
              if route.path not in SERVED_BY_FASTAPI for method in route.methods - {"HEAD"}}
    assert routes and not routes - headings, f"docs/api.md: add headings {routes - headings}"
