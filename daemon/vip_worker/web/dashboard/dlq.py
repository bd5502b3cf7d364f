"""The dead-letter pages (in progress)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
from typing import Annotated

from fastapi import Depends, Request

from vip_worker.web.dashboard.session import Session


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/dlq", name="dlq")
    async def dead_letters(request: Request, session: Viewer):
        return dash.render(request, "dlq.html", session, active="dlq")
