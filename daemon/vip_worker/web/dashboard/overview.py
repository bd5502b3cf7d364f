"""The overview page (a placeholder: the queues, their counts and charts come next)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
from typing import Annotated

from fastapi import Depends, Request

from vip_worker.web.dashboard.session import Session


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/overview", name="overview")
    async def overview(request: Request, session: Viewer):
        return dash.render(request, "overview.html", session, active="overview")
