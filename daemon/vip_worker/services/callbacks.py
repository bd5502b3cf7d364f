"""Completion callbacks: when a job ends, POST it, signed, to the app.

The ledger calls ``Callbacks.record`` right after it settles a job: the store records an
outbox entry on the job (``add_callback``, ``vip_worker.store.outbox``) before any attempt
to send it, then one attempt runs in this module's threads (never on the loop, never in
a handler's way). A failed attempt is due again after a backoff (1 s, 2 s, 4 s ... up to
``callback_backoff_max_s``); poller 0 sweeps for due entries every
``callback_sweep_interval_s`` (retries, and entries whose poller died mid-POST, which come
due when their hold runs out). Delivery is at least once: every attempt carries the same
idempotency id (``X-VIP-Delivery: <jobId>:<status>``). A callback never changes its job.

Each POST is signed as Stripe signs webhooks: ``X-VIP-Signature: t=<unix>,v1=<hex>``, the
HMAC-SHA256 with ``callback_secret`` of ``"<t>.<body>"`` (``sign``, ``verify``).

No server-side request forgery: a URL must be http(s), its host allowed by
``callback_allowed_hosts`` (when set), and every address the host resolves to, at send
time, public - loopback, private, link-local (the metadata address), unspecified and
the like are refused unless an address or CIDR entry of the allow-list covers them.
Redirects are never followed (a 3xx is a failed attempt).

The store is the poller's "store" resource, duck-typed (services do not import
``vip_worker.store``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters

from vip_worker.errors import DependencyUnavailable

log = logging.getLogger("vip_worker.services.callbacks")

SIGNATURE_HEADER = "X-VIP-Signature"
DELIVERY_HEADER = "X-VIP-Delivery"
TOLERANCE_S = 300  # the receiver's replay window (docs/api.md)
THREADS = 4
SWEEP_BATCH = 100
# Refused unless the allow-list names an address or CIDR covering them.
BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96"))
# fd00:ec2::254 (the IPv6 metadata address) is in fc00::/7; 169.254.169.254 in 169.254/16.


# -- signing ------------------------------------------------------------------------


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``X-VIP-Signature`` value of ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within
    ``tolerance_s`` of ``now`` (the receiver's check, as docs/api.md shows it)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), f"t={t},v1={fields.get('v1', '')}")


def backoff_s(attempts: int, cap_s: float) -> float:
    """The wait after the ``attempts``-th failed attempt: 1, 2, 4 ... seconds, capped."""
    return float(min(cap_s, 2 ** min(max(attempts - 1, 0), 30)))


# -- server-side request forgery ------------------------------------------------------


class Refused(ValueError):
    """A callback URL this daemon will not call."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking: call it off the loop)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from exc
    return sorted({info[4][0] for info in infos})


class AllowList:
    """``callback_allowed_hosts``: names, ``*.suffix`` names, addresses and CIDRs."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.networks: list[Any] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.names.add(entry.strip().lower().rstrip("."))

    @property
    def empty(self) -> bool:
        return not self.names and not self.networks

    def names_host(self, host: str) -> bool:
        if host in self.names:
            return True
        return any(n.startswith("*.") and host.endswith(n[1:]) for n in self.names)

    def covers(self, address: Any) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def check(self, url: str, lookup: Callable[[str, int], list[str]] | None = None
              ) -> list[Any]:
        """Refuse ``url`` (``Refused``, saying why) unless it may be called; the host's
        addresses, every one checked. Without ``lookup`` only a literal address is checked
        (the web API's check at creation: [] for a name); with it, every address the host
        resolves to (at send time)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("must be an http or https URL with a host")
        if parts.username or parts.password:
            raise Refused("must not carry credentials")
        host = parts.hostname.lower().rstrip(".")
        literal = literal_address(host)
        named = self.empty or self.names_host(host)
        # Unnamed: only CIDR entries can allow it, by its addresses (known at send time).
        if not named and (not self.networks or (literal is None and lookup is None)):
            raise Refused(f"host {host} is not in callback_allowed_hosts")
        if literal is not None:
            addresses = [literal]
        elif lookup is not None:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in lookup(host, port)]
        else:
            return []  # a name: its addresses are checked when it is called
        if not addresses:
            raise Refused(f"{host} resolves to no address")
        for address in addresses:
            if not named and not self.covers(address):
                raise Refused(f"host {host} ({address}) is not in callback_allowed_hosts")
            if any(address in n for n in BLOCKED if n.version == address.version) \
                    and not self.covers(address):
                raise Refused(f"{host} is {address}: a loopback, private, link-local or "
                              "reserved address (allow it in callback_allowed_hosts)")
        return addresses


def literal_address(host: str) -> Any:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PinnedAdapter(requests.adapters.HTTPAdapter):
    """Connects to the address the check approved, never to a second DNS answer (DNS
    rebinding); TLS still checks the certificate against the URL's host name."""

    def __init__(self, address: Any) -> None:
        self.address = f"[{address}]" if address.version == 6 else str(address)
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        host = host_params["host"]
        if host_params["scheme"] == "https":
            pool_kwargs = {**pool_kwargs, "server_hostname": host, "assert_hostname": host}
        return {**host_params, "host": self.address}, pool_kwargs


# -- the callbacks --------------------------------------------------------------------


def stamp(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def body_of(job: dict[str, Any]) -> bytes:
    """The POSTed JSON: the job's end, never its params or result (docs/api.md)."""
    entry = job["callback"]
    doc = {"id": entry["id"], "event": f"job.{entry['status']}", "jobId": str(job["_id"]),
           "status": entry["status"], "type": job.get("type"), "userId": job.get("userId"),
           "error": job.get("error"), "attempts": job.get("attempts"),
           "completedAt": stamp(job.get("completedAt")), "endedAt": stamp(entry["createdAt"])}
    return json.dumps(doc, separators=(",", ":")).encode()


class Callbacks:
    """One poller's callbacks: record an ended job's outbox entry, send it, sweep.

    :param settings: the daemon's settings (the ``callback_*`` values).
    :param store_of: returns the job store (opened on first use: called off the loop).
    :param clock: wall-clock time, aware UTC (the outbox's times).
    :param lookup: ``lookup(host, port)`` -> addresses (tests pass a fake resolver).
    """

    def __init__(self, settings, store_of: Callable[[], Any], *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 lookup: Callable[[str, int], list[str]] = resolve) -> None:
        self.settings = settings
        self.store_of = store_of
        self.clock = clock
        self.lookup = lookup
        self.allowed = AllowList(settings.callback_allowed_hosts)
        # One attempt at most takes this long; a sender holds its entry for longer.
        self.hold = timedelta(seconds=2 * settings.callback_timeout_s + 5)
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="callbacks")
        self.sending: set[str] = set()
        self.tasks: set[asyncio.Future] = set()

    @classmethod
    def open(cls, settings, store_of: Callable[[], Any], **kwargs: Any) -> Callbacks | None:
        """The poller's callbacks, or None: no ``callback_secret`` (callbacks are off)."""
        return cls(settings, store_of, **kwargs) if settings.callback_secret else None

    def url_for(self, payload: dict[str, Any] | None) -> str:
        url = (payload or {}).get("callbackUrl")
        return url if isinstance(url, str) and url else self.settings.callback_url

    async def record(self, job_id: str, payload: dict[str, Any] | None) -> None:
        """After a settle: the job's outbox entry (when it ended and has a URL), then one
        attempt in the background. A store outage is logged; the job is never touched."""
        url = self.url_for(payload)
        if not url:
            return
        now = self.clock()
        loop = asyncio.get_running_loop()
        try:
            entry = await loop.run_in_executor(self.pool, lambda: self.store_of().add_callback(
                job_id, url, now, first_at=now + self.hold))
        except DependencyUnavailable as exc:
            log.error("callback.not_recorded", extra={"job_id": job_id, "error": str(exc)[:500]})
            return
        if entry:
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        if job_id in self.sending:
            return
        self.sending.add(job_id)
        future = asyncio.get_running_loop().run_in_executor(self.pool, self.attempt, job_id)
        self.tasks.add(future)
        future.add_done_callback(lambda f: (self.tasks.discard(f), self.sending.discard(job_id)))

    def attempt(self, job_id: str) -> None:
        """One POST of the job's pending entry and its record (in a thread). Nothing it
        raises is lost: the entry stays pending and comes due again after its hold."""
        try:
            self.attempt_once(job_id)
        except Exception:  # noqa: BLE001 - a bug here must not vanish in a future
            log.error("callback.failed", exc_info=True, extra={"job_id": job_id})

    def attempt_once(self, job_id: str) -> None:
        store = self.store_of()
        try:
            job = store.get_job(job_id)
            entry = (job or {}).get("callback") or {}
            if entry.get("state") != "pending":
                return
            ok, error, final = self.post(entry["url"], body_of(job), entry["id"])
            now = self.clock()
            attempts = (entry.get("attempts") or 0) + 1
            age_s = (now - entry["createdAt"]).total_seconds()
            next_at = None
            if not ok and not final and attempts < self.settings.callback_max_attempts:
                next_at = now + timedelta(seconds=backoff_s(
                    attempts, self.settings.callback_backoff_max_s))
                if (next_at - entry["createdAt"]).total_seconds() > \
                        self.settings.callback_max_age_s:
                    next_at = None
            store.callback_attempted(job_id, entry["id"], ok, next_at, error, now)
        except DependencyUnavailable as exc:
            log.warning("callback.failed", extra={"job_id": job_id, "error": str(exc)[:500]})
            return
        fields = {"job_id": job_id, "callback_id": entry["id"], "attempts": attempts,
                  "status": entry["status"]}
        if ok:
            log.info("callback.delivered", extra=fields)
        elif next_at is None:
            log.error("callback.gave_up", extra={**fields, "error": error, "age_s": age_s})
        else:
            log.warning("callback.failed", extra={**fields, "error": error,
                                                  "next_at": stamp(next_at)})

    def post(self, url: str, body: bytes, callback_id: str) -> tuple[bool, str | None, bool]:
        """(delivered, error, final): final when no retry can succeed (a refused URL)."""
        try:
            addresses = self.allowed.check(url, self.lookup)
        except Refused as exc:
            return False, f"refused: {exc}", True
        parts = urlsplit(url)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: callback_id,
                   SIGNATURE_HEADER: sign(self.settings.callback_secret, body, int(time.time())),
                   "User-Agent": "vip-worker-callbacks",
                   "Host": parts.netloc.rpartition("@")[2]}
        try:
            with requests.Session() as session:
                session.trust_env = False  # no proxy from the environment: it would not pin
                adapter = PinnedAdapter(addresses[0])
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                response = session.post(url, data=body, headers=headers, allow_redirects=False,
                                        timeout=self.settings.callback_timeout_s)
        except requests.RequestException as exc:
            return False, f"{type(exc).__name__}: {exc}"[:500], False
        with response:
            if 200 <= response.status_code < 300:
                return True, None, False
            if 300 <= response.status_code < 400:
                return False, f"HTTP {response.status_code}: redirect refused", False
            return False, f"HTTP {response.status_code}", False

    # -- the sweep ------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: every ``callback_sweep_interval_s``, send what is due."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.callback_sweep_interval_s)
            try:
                taken = await loop.run_in_executor(self.pool, self.take_due)
            except DependencyUnavailable as exc:
                log.warning("callback.sweep_failed", extra={"error": str(exc)[:500]})
                continue
            for job_id in taken:
                self.submit(job_id)

    def take_due(self) -> list[str]:
        """The due entries this sweeper won (``hold_callback``), in a thread."""
        store, now = self.store_of(), self.clock()
        taken = []
        for job in store.due_callbacks(now, SWEEP_BATCH):
            job_id = str(job["_id"])
            if job_id in self.sending:
                continue
            if store.hold_callback(job_id, job["callback"]["nextAt"], now + self.hold):
                taken.append(job_id)
        return taken

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
