"""AWS Signature Version 4 for the JSON POSTs of ``vip_worker.sqs.wire``.

Only the shape those requests have: ``POST /``, no query string, a fixed set of
headers. botocore's ``SigV4Auth`` signs any request and costs ~120 us a call;
this one costs a few, because the signing key is derived once a day and the
canonical request is one format string. ``tests/unit/test_sigv4.py`` checks that
both sign the same request byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import NamedTuple

ALGORITHM = "AWS4-HMAC-SHA256"


class Credentials(NamedTuple):
    """A frozen snapshot, as botocore's ``get_frozen_credentials()`` returns."""

    access_key: str
    secret_key: str
    token: str | None


class Signer:
    """Signs requests for one region and service; caches the day's signing key."""

    def __init__(self, region: str, service: str = "sqs") -> None:
        self.region = region
        self.service = service
        self._key_for: tuple[str, str] = ("", "")
        self._key = b""

    def signing_key(self, secret_key: str, day: str) -> bytes:
        if self._key_for != (secret_key, day):
            key = _hmac(("AWS4" + secret_key).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._key, self._key_for = key, (secret_key, day)
        return self._key

    def sign(self, headers: dict[str, str], body: bytes, credentials: Credentials,
             now: float | None = None) -> dict[str, str]:
        """Add ``X-Amz-Date``, the session token if any, and ``Authorization``.

        ``headers`` must hold ``host`` and every other header to be signed, with
        lower-case names; they are all signed. Returns the same dict.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        headers["x-amz-date"] = stamp
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n"
                                    for name in names)
        canonical = (f"POST\n/\n\n{canonical_headers}\n{signed}\n"
                     + hashlib.sha256(body).hexdigest())
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (f"{ALGORITHM}\n{stamp}\n{scope}\n"
                   + hashlib.sha256(canonical.encode()).hexdigest())
        signature = hmac.new(self.signing_key(credentials.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        return headers


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()
