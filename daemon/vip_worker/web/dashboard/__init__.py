"""The operators' dashboard at ``/dashboard`` (docs/dashboard.md): server-rendered pages.

``create_dashboard(settings, jobs, auth)`` -> an ASGI app that ``web/app.py`` mounts. It
shares the job API's ``Jobs`` (store, producer, thread pool) and ``Authenticator`` (keys,
open access). Each page is a module with ``add_routes(app, dash)``, listed in ``PAGES``:

- ``session``: sign-in, sign-out (session.py also holds the roles and CSRF checks);
- ``overview`` and ``fleet`` (their templates ``overview.html``, ``fleet.html``, and the
  live parts ``_overview_live.html``, ``_fleet_live.html``); ``live``: ``/dashboard/events``,
  the Server-Sent Events that update them and the newest jobs (one producer per process,
  ``static/live.js``), with ``queuestats`` (the shared queue-attributes cache) and
  ``charts`` (inline SVG);
- ``jobs``: search, a job's timeline, cancel and retry (the list is ``_jobs_live.html``;
  the newest jobs, unfiltered, are also a fragment of the live updates);
- ``dlq``: the dead-letter queues, their messages, redrive and delete.

Pages extend ``templates/base.html`` (navigation, banner, sign-out); files in ``static/``
are served at ``/dashboard/static/``. Every route but the sign-in page needs a session;
state-changing routes go through ``Dashboard.act`` (admin, CSRF token, confirmation).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from vip_worker.web.dashboard import session as sessions
from vip_worker.web.dashboard.session import Session, SignInRequired

HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = ("session", "overview", "jobs", "dlq", "fleet", "live")
NAV = (("overview", "Overview"), ("jobs", "Jobs"), ("dlq", "Dead letters"),
       ("fleet", "Fleet"))
# No inline script or style: everything comes from /dashboard/static/.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Dashboard:
    """What the pages share: settings, the API's ``Jobs``, sessions and templates."""

    def __init__(self, settings, jobs, auth) -> None:
        self.settings = settings
        self.jobs = jobs
        self.auth = auth
        self.sessions = sessions.Sessions(sessions.load_secret(settings),
                                          settings.dashboard_session_max_age_s, auth)
        env = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")),
                          autoescape=select_autoescape(["html"]), trim_blocks=True,
                          lstrip_blocks=True)
        self.templates = Jinja2Templates(env=env)
        self.resources: dict[str, Any] = {}  # shared by pages (e.g. a queue-attributes cache)

    @property
    def store(self):
        return self.jobs.store

    async def call(self, fn, *args, **kwargs):
        """A blocking store or SQS call, in the thread pool (503 when it is down)."""
        return await self.jobs.call(fn, *args, **kwargs)

    def viewer(self, request: Request) -> Session:
        """The route dependency: the signed-in session (any role), else the sign-in page."""
        found = self.sessions.read(request)
        if found is None:
            raise SignInRequired()
        return found

    async def act(self, request: Request) -> tuple[Session, dict[str, list[str]]]:
        """A state-changing POST: its form, once session, role, CSRF and confirmation pass."""
        sessions.check_origin(request)
        form = await sessions.read_form(request)
        return sessions.check_action(self.sessions.read(request), form), form

    def render(self, request: Request, name: str, session: Session | None, *,
               status: int = 200, headers: dict[str, str] | None = None,
               **context: Any) -> Response:
        base = sessions.base_path(request)
        return self.templates.TemplateResponse(request, name, {
            "base": base, "session": session, "nav": NAV,
            "open_access": self.auth.open_to(request), **context}, status_code=status,
            headers=headers)


def create_dashboard(settings, jobs, auth) -> FastAPI:
    dash = Dashboard(settings, jobs, auth)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.dashboard = dash

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired):
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = sessions.base_path(request) + "/login"
            return RedirectResponse(f"{login}?next={_quote(target)}", status_code=303)
        return dash.render(request, "error.html", None, status=401,
                           title="Sign in first", detail="This action needs a session.")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return dash.render(request, "error.html", dash.sessions.read(request),
                           status=exc.status_code, title=_TITLES.get(exc.status_code, "Error"),
                           detail=_describe(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                    for e in exc.errors()]
        return dash.render(request, "error.html", dash.sessions.read(request), status=422,
                           title="Bad input", detail="; ".join(problems))

    @app.get("/", name="home")
    async def home(request: Request):
        return RedirectResponse(sessions.base_path(request) + "/overview", status_code=303)

    for page in PAGES:
        importlib.import_module(f"vip_worker.web.dashboard.{page}").add_routes(app, dash)
    app.mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static")
    return app


_TITLES = {400: "Bad request", 401: "Sign in first", 403: "Not allowed", 404: "Not found",
           409: "Conflict", 415: "Unsupported form", 422: "Bad input",
           503: "Unavailable"}


def _describe(detail: Any) -> str:
    """An HTTPException's detail as one line (the API's 422s carry a list of errors)."""
    if isinstance(detail, list):
        return "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg')}" if isinstance(e, dict)
                         else str(e) for e in detail)
    return str(detail)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")
