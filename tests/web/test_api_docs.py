"""Every route of the job API has a heading in docs/api.md, and every route of the
dashboard (mounted at /dashboard) one in docs/dashboard.md."""

from __future__ import annotations

import re
from pathlib import Path

from vip_worker import config
from vip_worker.web.app import create_app

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
DASHBOARD_MD = API_MD.with_name("dashboard.md")
SERVED_BY_FASTAPI = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_every_route_has_a_heading_in_api_md(tmp_path):
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False)
    app = create_app(settings)
    routes = {f"{method} {route.path}" for route in app.routes
              if route.path not in SERVED_BY_FASTAPI and hasattr(route, "methods")
              for method in route.methods - {"HEAD"}}
    missing = routes - headings(API_MD)
    assert routes and not missing, f"docs/api.md: add headings {missing}"


def test_every_dashboard_route_has_a_heading_in_dashboard_md(tmp_path):
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False)
    [mount] = [r for r in create_app(settings).routes if r.path == "/dashboard"]
    routes = {f"{method} /dashboard{route.path}" for route in mount.app.routes
              if hasattr(route, "methods") for method in route.methods - {"HEAD"}}
    text = DASHBOARD_MD.read_text()
    # A heading, or the route in code in the text (a GET may leave out its method).
    named = headings(DASHBOARD_MD) | set(re.findall(r"`([A-Z]+ /dashboard\S*)`", text)) | {
        f"GET {path}" for path in re.findall(r"`(/dashboard\S*)`", text)}
    missing = routes - named
    assert len(routes) > 5 and not missing, f"docs/dashboard.md: name the routes {missing}"


def headings(page: Path) -> set[str]:
    return set(re.findall(r"^#{2,4} `([A-Z]+ \S+)`", page.read_text(), re.MULTILINE))
