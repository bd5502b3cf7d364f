"""The fleet page (a placeholder: every daemon on every host comes next)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
from typing import Annotated

from fastapi import Depends, Request

from vip_worker.web.dashboard.session import Session


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/fleet", name="fleet")
    async def fleet(request: Request, session: Viewer):
        return dash.render(request, "fleet.html", session, active="fleet")
