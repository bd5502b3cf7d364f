"""The jobs pages (in progress): the newest jobs."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
from typing import Annotated

from fastapi import Depends, Request

from vip_worker.web.dashboard.session import Session


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/jobs", name="jobs")
    async def jobs(request: Request, session: Viewer):
        found = await dash.call(dash.store.list_jobs, None, 50)
        return dash.render(request, "jobs.html", session, active="jobs", jobs=found)
