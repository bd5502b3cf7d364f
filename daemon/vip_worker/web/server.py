"""``vip-worker web``: check where it may bind, then serve the job API with uvicorn.

No authentication configured (no API key in ``web_keys_file``, no ``web_jwt_key`` nor
``web_jwt_jwks_url``) means open access, so the API then binds loopback only: any other
``web_host`` exits 78 (EX_CONFIG: systemd does not restart it) naming the setting.
X-Forwarded-For/-Proto are trusted only from ``web_forwarded_allow_ips``.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys

from vip_worker import config, exitcodes, logconfig
from vip_worker.web.auth import is_loopback
from vip_worker.web.keys import KeyRing, keys_path

log = logging.getLogger("vip_worker.web")


def auth_configured(settings) -> bool:
    return bool(settings.web_jwt_key or settings.web_jwt_jwks_url
                or KeyRing(keys_path(settings)))


def check_bind(settings) -> str | None:
    """Why ``settings`` may not be served, or None."""
    if is_loopback(settings.web_host) or auth_configured(settings):
        return None
    return (f"web_host = {settings.web_host!r} is not a loopback address and no "
            f"authentication is configured: create an API key (vip-worker web-key create) "
            f"or set web_jwt_key / web_jwt_jwks_url, or bind 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def make_server(settings, app, sock: socket.socket):
    import uvicorn

    trusted = list(settings.web_forwarded_allow_ips)
    # uvloop (a dependency) and httptools (the web extra), named rather than "auto" so a
    # missing one fails at start instead of silently costing more CPU per request; no
    # access log (a JSON line per request would be the largest cost of a GET).
    return uvicorn.Server(uvicorn.Config(
        app, loop="uvloop", http="httptools",
        proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
        log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
        host=sock.getsockname()[0], port=sock.getsockname()[1]))


def settle_heap() -> None:
    """Move every object made so far (FastAPI, pydantic, the app: some 60,000) out of the
    garbage collector's reach. A full collection over them stops the event loop for
    10-15 ms, which alone would break a GET's 10 ms p99 target whenever one runs; they
    live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_web(args, settings) -> int:
    changes = {k: v for k, v in (("web_host", args.host), ("web_port", args.port))
               if v is not None}
    if changes:
        settings = settings.with_values(**changes)
    from vip_worker.web.auth import check_jwt

    refused = check_bind(settings) or check_jwt(settings)
    if refused:
        print(f"vip-worker: configuration error: {refused}", file=sys.stderr)
        return exitcodes.CONFIG
    logconfig.configure(settings.log_level, settings.log_file, config.secrets(settings))
    from vip_worker.web.app import create_app

    try:
        sock = bind(settings.web_host, settings.web_port)
    except OSError as exc:
        print(f"vip-worker: cannot bind {settings.web_host}:{settings.web_port}: {exc}",
              file=sys.stderr)
        return exitcodes.UNAVAILABLE
    server = make_server(settings, create_app(settings), sock)
    settle_heap()
    log.info("web.listening", extra={"url": url_of(sock)})
    server.run(sockets=[sock])
    return exitcodes.OK

