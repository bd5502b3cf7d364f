"""Who is calling, and which jobs it may see (every route depends on ``caller``).

- An API key (``Authorization: Bearer vwk_...`` or ``X-API-Key``): a ``backend`` key acts
  for the user it names in ``X-User-Id`` (required); an ``admin`` key sees every job and
  may name a user to create jobs for; a ``viewer`` key (the dashboard's) is refused (403).
- The app's session token (``Authorization: Bearer <JWT>``), verified with PyJWT against
  ``web_jwt_key`` or the keys at ``web_jwt_jwks_url``; the user is the
  ``web_jwt_user_claim`` claim. ``X-User-Id`` is refused (403): a browser acts for itself.
- Neither configured, bound to loopback, no proxy trusted (``web_forwarded_allow_ips``
  empty): open access, every caller a backend (``X-User-Id`` or ``local``), but only for a
  request from a loopback address, with a loopback ``Host`` (127.0.0.1, localhost, [::1]:
  a DNS-rebound name is refused) and no ``Forwarded``/``X-Forwarded-*`` header (a proxy on
  the same host would otherwise open the API to everyone). ``server.py`` refuses to bind
  elsewhere in that case. Revoking the last key at runtime opens nothing behind a proxy.

Failures answer 401 (no or bad credentials), 403 (``X-User-Id`` from a session token),
422 (a backend key without ``X-User-Id``); never 500.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from vip_worker.web.keys import PREFIX, KeyRing

log = logging.getLogger("vip_worker.web")
USER_ID_RE = re.compile(r"\A[A-Za-z0-9_.:@|-]{1,128}\Z")  # \Z: no trailing newline
OPEN_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
OPEN_USER = "local"
BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    user_id: str | None  # None: an admin acting for nobody in particular
    role: str  # "user" (session token), "backend", "admin", "open"

    def sees(self, job: dict[str, Any]) -> bool:
        return self.role == "admin" or str(job.get("userId")) == self.user_id


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_host(header: str) -> bool:
    """A ``Host`` header naming 127.0.0.1, localhost or [::1], any port."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[:host.find("]") + 1]
    else:
        host = host.partition(":")[0]
    return host in OPEN_HOSTS


def forwarded(request: Request) -> bool:
    """Whether a proxy (or someone pretending to be one) forwarded the request."""
    return any(name == "forwarded" or name.startswith("x-forwarded-")
               for name in request.headers.keys())


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers=BEARER)


def check_jwt(settings) -> str | None:
    """Why the session-token settings cannot be used safely; None when they can."""
    algorithms = list(settings.web_jwt_algorithms)
    hmac_algs = [a for a in algorithms if a.upper().startswith("HS")]
    key = settings.web_jwt_key
    if key and key.lstrip().startswith("-----BEGIN"):
        if hmac_algs:
            return (f"web_jwt_algorithms: {', '.join(hmac_algs)} with a PEM key in "
                    "web_jwt_key would let anyone holding that (public) key sign tokens")
    elif key and hmac_algs != algorithms:
        return ("web_jwt_key is not a PEM key, so it is a shared secret: set "
                "web_jwt_algorithms to HMAC algorithms only (e.g. [\"HS256\"]), or give "
                "the public key in PEM form")
    if settings.web_jwt_jwks_url:
        if hmac_algs:
            return "web_jwt_algorithms: a JWKS URL serves public keys; HMAC algorithms refused"
        if not settings.web_jwt_audience:
            return ("web_jwt_audience is required with web_jwt_jwks_url: an identity "
                    "provider's keys also sign tokens meant for other applications")
    return None


class Authenticator:
    def __init__(self, settings, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.jwt_key = settings.web_jwt_key
        # As configured, never guessed from the key's form: a public key taken for an
        # HMAC secret would let anyone who has it sign tokens (check_jwt refuses that).
        self.algorithms = list(settings.web_jwt_algorithms)
        self.jwks = (jwt.PyJWKClient(settings.web_jwt_jwks_url, cache_keys=True)
                     if settings.web_jwt_jwks_url else None)
        self.audience = settings.web_jwt_audience or None
        self.issuer = settings.web_jwt_issuer or None
        self.user_claim = settings.web_jwt_user_claim
        self.loopback = is_loopback(settings.web_host)
        self.proxied = bool(settings.web_forwarded_allow_ips)
        self.refusal_logged = False

    @property
    def jwt_configured(self) -> bool:
        return bool(self.jwt_key or self.jwks)

    def configured(self) -> bool:
        return self.jwt_configured or bool(self.keyring)

    def open_access(self) -> bool:
        """No credentials configured and nothing but loopback can reach the server.

        Behind a proxy (``web_forwarded_allow_ips``) every request arrives from loopback,
        so a proxy is never open, even when the last key is revoked at runtime.
        """
        if self.configured() or not self.loopback:
            return False
        if self.proxied:
            if not self.refusal_logged:
                self.refusal_logged = True
                log.warning("web.open_access_refused", extra={
                    "reason": "no credentials configured and web_forwarded_allow_ips set: "
                              "every request needs a key or a session token"})
            return False
        return True

    def open_to(self, request: Request) -> bool:
        """Open access for this request: from loopback, to a loopback Host, not forwarded."""
        client = request.client.host if request.client else ""
        return (self.open_access() and is_loopback(client)
                and loopback_host(request.headers.get("host", "")) and not forwarded(request))

    async def __call__(self, request: Request) -> Caller:
        """The route dependency: the caller, or an HTTPException."""
        token = request.headers.get("x-api-key")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer":
            token = bearer.strip()
        named = request.headers.get("x-user-id")
        if named is not None and not USER_ID_RE.fullmatch(named):
            raise HTTPException(422, [{"loc": ["header", "X-User-Id"], "type": "value_error",
                                       "msg": "1-128 characters of [A-Za-z0-9_.:@|-]"}])
        if not token:
            if self.open_to(request):
                return Caller(named or OPEN_USER, "open")
            raise unauthorized("credentials required: an API key or a session token")
        if token.startswith(PREFIX):
            key = self.keyring.verify(token)
            if key is None:
                raise unauthorized("unknown or revoked API key")
            if key.role == "admin":
                return Caller(named, "admin")
            if key.role != "backend":  # a viewer key: the dashboard's, read-only
                raise HTTPException(403, f"a {key.role} key is for the dashboard only")
            if named is None:
                raise HTTPException(422, [{"loc": ["header", "X-User-Id"], "type": "missing",
                                           "msg": "a backend key names the user it acts for"}])
            return Caller(named, "backend")
        user = await self.verify_jwt(token)
        if named is not None:
            raise HTTPException(403, "X-User-Id is for backend API keys, not session tokens")
        return Caller(user, "user")

    async def verify_jwt(self, token: str) -> str:
        if not self.jwt_configured:
            raise unauthorized("session tokens are not accepted here (no web_jwt_key)")
        try:
            if self.jwks is not None:
                # PyJWKClient fetches (then caches) the key set with a blocking call.
                key: Any = (await run_in_threadpool(self.jwks.get_signing_key_from_jwt,
                                                    token)).key
            else:
                key = self.jwt_key
            claims = jwt.decode(token, key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer,
                                options={"require": ["exp"]})
        except (jwt.PyJWTError, ValueError) as exc:
            raise unauthorized(f"invalid session token: {exc}") from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str | int) or not USER_ID_RE.fullmatch(str(user)):
            raise unauthorized(f"session token has no usable {self.user_claim!r} claim")
        return str(user)
