"""The dashboard's sign-in, sessions, roles and CSRF checks.

An ``admin`` or ``viewer`` key (``vip-worker web-key create --role ...``, web/keys.py)
signs in once; the browser then holds a session cookie: ``base64(json) . HMAC-SHA256``
with the secret of ``dashboard_session_secret`` (or one generated once in the state
directory). The cookie is HttpOnly, SameSite=Strict, scoped to ``/dashboard``, and Secure
when the request came over HTTPS (the scheme uvicorn took from X-Forwarded-Proto only for
``web_forwarded_allow_ips``). It names the key, so revoking the key ends its sessions at
the next request. A ``viewer`` sees every page and cannot act.

Every state-changing request is a POST carrying the session's CSRF token and the
confirmation field ``confirm=yes`` (the confirm page sets it); anything else is refused
with 403 (SameSite=Strict already keeps the cookie off other sites' requests), and so is
a POST whose ``Origin`` (or ``Sec-Fetch-Site``) says it came from another site. No key
configured, bound to loopback and no proxy trusted (the dev stack): open access as an admin
for requests from loopback to a loopback ``Host`` (auth.py ``open_to``: a DNS-rebound
name gets the sign-in page), with a banner saying so; its CSRF token is random per
process. Tokens and signatures are compared as bytes (any text, never a 500).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response

log = logging.getLogger("vip_worker.web.dashboard")
COOKIE = "vw_dashboard"
SECRET_FILE = "dashboard-secret"
SIGN_IN_ROLES = ("admin", "viewer")
OPEN_NAME = "open access (loopback)"
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Session:
    key_id: str  # "" in open access
    name: str
    role: str  # "admin" | "viewer"
    csrf: str
    expires: int  # epoch seconds

    @property
    def can_act(self) -> bool:
        return self.role == "admin"

    @property
    def who(self) -> str:
        return f"{self.name} (key {self.key_id})" if self.key_id else self.name


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, actions answer 401."""


def load_secret(settings) -> bytes:
    """``dashboard_session_secret``, or the one kept in the state directory (made once)."""
    if settings.dashboard_session_secret:
        return settings.dashboard_session_secret.encode()
    from vip_worker.store.factory import state_dir

    path = os.path.join(state_dir(settings), SECRET_FILE)
    try:
        return kept_secret(path)
    except OSError as exc:  # a read-only state directory: sign-ins last until a restart
        log.warning("dashboard.ephemeral_secret", extra={"path": path, "error": str(exc)})
        return secrets.token_bytes(32)


def kept_secret(path: str) -> bytes:
    """The secret in ``path``, made (mode 0600) by the first web process that needs it.

    Written whole to a temporary file, then linked to ``path``: a second process starting
    at the same moment reads the first one's complete secret, never a half-written file.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(path):
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".dashboard-secret.")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:  # mkstemp: mode 0600
                handle.write(secrets.token_urlsafe(48))
            os.link(temp, path)
        except FileExistsError:
            pass  # another web process made it first: use theirs
        finally:
            os.unlink(temp)
    with open(path, encoding="ascii") as handle:
        text = handle.read().strip()
    if not text:
        raise OSError(f"{path} is empty: delete it (a new one is made) or set "
                      f"dashboard_session_secret")
    return text.encode()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signs and reads session cookies for one app; ``auth`` is its Authenticator."""

    def __init__(self, secret: bytes, max_age_s: int, auth) -> None:
        self.secret = secret
        self.max_age_s = max_age_s
        self.auth = auth
        self.open_csrf = secrets.token_urlsafe(24)  # per process: no page of ours, no token

    def sign(self, payload: str) -> str:
        return b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, key_id: str, name: str, role: str) -> tuple[Session, str]:
        session = Session(key_id, name, role, secrets.token_urlsafe(24),
                          int(time.time()) + self.max_age_s)
        payload = b64(json.dumps([session.key_id, session.name, session.role, session.csrf,
                                  session.expires]).encode())
        return session, f"{payload}.{self.sign(payload)}"

    def open_session(self) -> Session:
        return Session("", OPEN_NAME, "admin", self.open_csrf, 0)

    def read(self, request: Request) -> Session | None:
        """The request's valid session, the open one, or None."""
        if self.auth.open_to(request):
            return self.open_session()
        value = request.cookies.get(COOKIE, "")
        payload, _, signature = value.partition(".")
        if not payload or not same(signature, self.sign(payload)):
            return None
        try:
            key_id, name, role, csrf, expires = json.loads(unb64(payload))
        except (ValueError, TypeError):
            return None
        if int(expires) < time.time():
            return None
        entry = self.auth.keyring.entries().get(key_id)
        if entry is None or entry.get("role") != role or role not in SIGN_IN_ROLES:
            return None  # revoked, or its role changed: sign in again
        return Session(key_id, name, role, csrf, int(expires))

    def set_cookie(self, response: Response, request: Request, value: str) -> None:
        response.set_cookie(COOKIE, value, max_age=self.max_age_s, path=base_path(request),
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path=base_path(request), httponly=True,
                               samesite="strict", secure=request.url.scheme == "https")


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts; any characters (compare_digest refuses
    non-ASCII ``str`` with a TypeError, which would be a 500)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def default_port(netloc: str, scheme: str) -> str:
    """``netloc`` without the scheme's default port (``host:443`` is ``host`` for https)."""
    netloc = netloc.strip().lower()
    for port, for_scheme in ((":443", "https"), (":80", "http")):
        if scheme == for_scheme and netloc.endswith(port):
            return netloc[:-len(port)]
    return netloc


def check_origin(request: Request) -> None:
    """403 for a POST another site's page made (a browser says so in ``Origin`` and
    ``Sec-Fetch-Site``); clients that send neither (curl, scripts) still need the token.

    The request's own host is its ``Host``, or the ``X-Forwarded-Host`` a trusted proxy
    (``web_forwarded_allow_ips``) sends when it rewrites ``Host``.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is None:
        return
    parts = urlsplit(origin) if origin != "null" else None
    if parts is None or not parts.netloc:
        raise HTTPException(403, "cross-site request refused (Origin: null)")
    scheme = parts.scheme.lower()
    ours = {default_port(request.headers.get("host", ""), scheme)}
    if request.app.state.dashboard.auth.proxied:
        ours |= {default_port(h, scheme)
                 for h in request.headers.get("x-forwarded-host", "").split(",") if h.strip()}
    if default_port(parts.netloc, scheme) not in ours:
        raise HTTPException(403, "cross-site request refused (Origin is another site)")


def base_path(request: Request) -> str:
    """Where the dashboard is mounted (``/dashboard``)."""
    return request.scope.get("root_path", "").rstrip("/") or "/"


async def read_form(request: Request) -> dict[str, list[str]]:
    """A URL-encoded form (the size is bounded by the app's BodyLimit); 415 otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM_TYPE:
        raise HTTPException(415, f"send the form as {FORM_TYPE}")
    try:
        return parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True,
                        max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"unreadable form: {exc}") from None


def field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0]


def check_action(session: Session | None, form: dict[str, list[str]]) -> Session:
    """The session allowed to do what the form asks, or 401/403 naming why not."""
    if session is None:
        raise HTTPException(401, "sign in first")
    if not session.can_act:
        raise HTTPException(403, "this session is read-only (a viewer key)")
    if not same(field(form, "csrf"), session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    if field(form, "confirm") != "yes":
        raise HTTPException(403, "the action was not confirmed")
    return session


def log_action(session: Session, action: str, **what: Any) -> None:
    """Every action, with who did it (never a key's text)."""
    log.info("dashboard.action", extra={"who": session.who, "role": session.role,
                                        "action": action, **what})


def safe_next(request: Request, target: str) -> str:
    """A redirect target inside the dashboard only (no open redirect)."""
    base = base_path(request)
    if target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


def add_routes(app, dash) -> None:
    """GET/POST /login, POST /logout."""

    @app.get("/login", name="login")
    async def login_page(request: Request, next: str = ""):  # noqa: A002 (the query's name)
        if dash.sessions.auth.open_to(request):
            return RedirectResponse(safe_next(request, next), status_code=303)
        return dash.render(request, "login.html", None, next=next, error=None)

    @app.post("/login")
    async def login(request: Request):
        check_origin(request)
        form = await read_form(request)
        target = safe_next(request, field(form, "next"))
        key = dash.sessions.auth.keyring.verify(field(form, "key").strip())
        if key is None:
            log.warning("dashboard.login_refused", extra={"reason": "unknown key"})
            return dash.render(request, "login.html", None, status=401, next=target,
                               error="Unknown or revoked key.")
        if key.role not in SIGN_IN_ROLES:
            log.warning("dashboard.login_refused", extra={"key_id": key.id, "role": key.role})
            return dash.render(request, "login.html", None, status=403, next=target,
                               error=f"A {key.role} key cannot sign in to the dashboard: "
                                     f"use an admin or a viewer key.")
        session, value = dash.sessions.issue(key.id, key.name, key.role)
        log.info("dashboard.login", extra={"who": session.who, "role": session.role})
        response = RedirectResponse(target, status_code=303)
        dash.sessions.set_cookie(response, request, value)
        return response

    @app.post("/logout", name="logout")
    async def logout(request: Request):
        check_origin(request)
        form = await read_form(request)
        session = dash.sessions.read(request)
        if session is None or not same(field(form, "csrf"), session.csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        log.info("dashboard.logout", extra={"who": session.who})
        response = RedirectResponse(base_path(request) + "/login", status_code=303)
        dash.sessions.clear_cookie(response, request)
        return response
