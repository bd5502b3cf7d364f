"""The generation-service client: the FastAPI app that writes articles and images.

One :class:`GenerationClient` (one ``requests.Session``) per poller process,
made after fork in a plugin's poller-start hook and shared by that poller's
handler threads. Each call is one POST with no retries of its own: the outcome
is classified by type and the daemon retries the message, not the request.

Outcomes:

- 2xx with a JSON object body: the object is returned.
- 2xx with anything else, and any other 4xx: :class:`~vip_worker.errors.PermanentError`
  carrying the service's own message (FastAPI's ``{"detail": ...}``).
- 408, 425, 429, every 5xx, an unexpected 1xx/3xx, a connect or read timeout, a
  refused or reset connection: :class:`GenerationUnavailable`, a transient
  :class:`~vip_worker.errors.RetryLater` (a ``Retry-After``, on a 429, 408, 425 or any
  5xx, becomes its delay: a 503 with one pauses the provider, ``pipeline/quota.py``).
- A streamed answer that runs past the call's read timeout as a whole (the job's time
  left: a stream of keep-alives or a trickle of words), and a body that stalls while it
  is read: :class:`GenerationUnavailable` too.

Error texts never carry the credentials of a ``user:password@`` base URL, nor a
payload: they end up in logs and in dead-letter attributes.
"""

from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from vip_worker import __version__
from vip_worker.errors import PermanentError, RetryLater
from vip_worker.pipeline import streaming

MAX_FIELD_CHARS = 20_000
MAX_BODY_BYTES = 256 * 1024
SNIPPET_CHARS = 200
DETAIL_MAX_CHARS = 500
RETRY_AFTER_MAX_S = 900.0
JOB_ID_HEADER = "X-Job-Id"
# Refusals that say "not now" rather than "never".
TRANSIENT_4XX = frozenset({408, 425, 429})
CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class GenerationUnavailable(RetryLater):
    """The service could not answer now (5xx, 429, timeout, refused or reset connection).

    A ``RetryLater``, so transient: the message is retried with the queue's
    backoff, or after ``delay_s`` when the service said how long (``Retry-After``).

    :ivar status: the HTTP status, or ``None`` when no response came back.
    :ivar reason: a readable cause, free of credentials.
    """

    def __init__(self, reason: str, status: int | None = None, delay_s: float | None = None):
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"generation service unavailable ({where}): {reason}", delay_s)
        self.status = status
        self.reason = reason


def camel_to_snake(name: str) -> str:
    """``wordCount`` -> ``word_count``, ``imageURL`` -> ``image_url``; snake_case unchanged."""
    return CAMEL_BOUNDARY.sub("_", name).lower()


def snake_keys(value: Any, where: str = "payload") -> Any:
    """``value`` with every dict key (at any depth) in snake_case.

    :raises PermanentError: two keys map to one name (``wordCount`` and ``word_count``).
    """
    if isinstance(value, list):
        return [snake_keys(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    result: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise PermanentError(f"{where} has a non-string key {key!r}")
        name = camel_to_snake(key)
        if name in result:
            raise PermanentError(f"{where}.{origin[name]} and {where}.{key} both mean {name!r}")
        origin[name] = key
        result[name] = snake_keys(item, f"{where}.{key}")
    return result


def long_strings(value: Any, where: str) -> Iterator[tuple[str, int]]:
    """(field path, length) of every string longer than ``MAX_FIELD_CHARS``."""
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            yield where, len(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from long_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from long_strings(item, f"{where}[{i}]")


def encode_body(payload: dict[str, Any], body: dict[str, Any]) -> bytes:
    """The JSON request body, after the size checks (field paths name the app's keys).

    :raises PermanentError: a string field or the whole body is too large, or a
        value is not JSON (NaN, an object).
    """
    too_long = next(long_strings(payload, "payload"), None)
    if too_long:
        where, length = too_long
        raise PermanentError(f"{where} is {length} characters (limit {MAX_FIELD_CHARS})")
    try:
        data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"payload is not JSON-encodable: {exc}") from None
    if len(data) > MAX_BODY_BYTES:
        largest = max(payload, key=lambda k: len(json.dumps(payload[k], default=str)))
        raise PermanentError(
            f"payload encodes to {len(data)} bytes (limit {MAX_BODY_BYTES}); "
            f"the largest field is payload.{largest}")
    return data


def strip_credentials(url: str) -> tuple[str, str]:
    """(the URL without ``user:password@``, the removed userinfo or '')."""
    parts = urlsplit(url)
    userinfo, sep, hostport = parts.netloc.rpartition("@")
    if not sep:
        return url, ""
    return urlunsplit(parts._replace(netloc=f"***@{hostport}")), userinfo


def render_detail(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or a list of validation errors -> one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc") or ())
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(json.dumps(item, default=str))
        return "; ".join(parts) or "(empty detail)"
    return json.dumps(detail, default=str)


def service_message(response: requests.Response) -> str:
    """The service's own explanation of an error response, short and on one line."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "detail" in doc:
        text = render_detail(doc["detail"])
    elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text = doc["message"]
    else:
        text = response.text[:SNIPPET_CHARS].strip() or response.reason or "(empty body)"
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX_CHARS else text[:DETAIL_MAX_CHARS - 3] + "..."


def retry_after_s(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds (the delta form only), clipped to ``RETRY_AFTER_MAX_S``."""
    try:
        delay = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(max(delay, 0.0), RETRY_AFTER_MAX_S)


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: requests -> urllib3 -> the socket error."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested: Iterable[Any] = (getattr(current, "reason", None), current.__cause__,
                                 current.__context__, *current.args)
        todo.extend(n for n in nested if isinstance(n, BaseException))


def connection_reason(error: BaseException) -> str:
    """A readable cause for a failed connection: refused, reset, closed, or the innermost error."""
    chain = list(causes(error))
    for item in chain:
        if isinstance(item, ConnectionRefusedError) or getattr(item, "errno", None) == \
                errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(item, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(item, BrokenPipeError):
            return "connection closed while sending the request"
        if type(item).__name__ == "RemoteDisconnected":
            return "connection closed without a response"
        if type(item).__name__ in ("NameResolutionError", "gaierror"):
            return "host name does not resolve"
        if type(item).__name__ == "ReadTimeoutError":
            return "read timed out"
    innermost = chain[-1]
    return f"{type(innermost).__name__}: {innermost}"


class GenerationClient:
    """Client of the generation service; thread-safe, one per poller process.

    :param base_url: the service's root (``fastapi_url``), e.g. ``http://127.0.0.1:8000``.
    :param article_path: path template of article calls; ``{mode}`` is replaced by the
        (checked, quoted) mode. Without ``{mode}``, the mode is sent in the body.
    :param image_path: path of image calls.
    :param modes: the article modes a payload may ask for; anything else is refused.
    :param connect_timeout_s: connect timeout of every call.
    :param read_timeout_s: longest read timeout of a call (a call may ask for less).
    :param session: a ``requests.Session`` to use (default: a new one, closed by ``close``).
    :param pool_maxsize: connections kept to the service; match the poller's concurrency.
    :param stream: ``generation_stream``: ``auto``, ``ndjson``, ``sse`` (ask for a
        streamed answer when the caller reads it, ``on_words``) or ``off``.
    """

    def __init__(self, base_url: str, *, article_path: str, image_path: str,
                 modes: Iterable[str], connect_timeout_s: float, read_timeout_s: float,
                 session: requests.Session | None = None, pool_maxsize: int = 10,
                 stream: str = "off") -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.safe_base_url, self.userinfo = strip_credentials(self.base_url)
        self.article_path = "/" + article_path.lstrip("/")
        self.image_path = "/" + image_path.lstrip("/")
        self.modes = tuple(modes)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.stream = stream
        self.owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_maxsize)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = f"vip-worker/{__version__}"
        self.session = session

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (only of a session this client made)."""
        if self.owns_session:
            self.session.close()

    def article(self, payload: dict[str, Any], read_timeout_s: float | None = None,
                job_id: str | None = None,
                on_words: Callable[[int], None] | None = None) -> dict:
        """Generate an article from the app's camelCase payload; the service's JSON object.

        :param payload: the message's payload (``mode``, ``topic``, ``wordCount``...).
        :param read_timeout_s: this call's read timeout if shorter than the client's.
        :param job_id: sent as ``X-Job-Id`` (the service, and the stub's call log, can
            tell a job's calls apart).
        :param on_words: with ``stream`` on, called with the words received so far while
            the service streams its answer (``pipeline/streaming.py``).
        :raises PermanentError: unknown mode, oversized field, 4xx, non-JSON answer.
        :raises GenerationUnavailable: the service could not answer now.
        """
        if not isinstance(payload, dict):
            raise PermanentError(f"payload must be an object, got {type(payload).__name__}")
        mode = payload.get("mode", "topic")
        if not isinstance(mode, str) or mode not in self.modes:
            raise PermanentError(
                f"unknown generation mode {mode!r} (known: {', '.join(self.modes)})")
        fields = {k: v for k, v in payload.items() if k != "mode"}
        if "{mode}" in self.article_path:
            path = self.article_path.replace("{mode}", quote(mode, safe=""))
        else:
            path, fields = self.article_path, payload
        return self.post(path, payload, snake_keys(fields), read_timeout_s, job_id, on_words)

    def image(self, payload: dict[str, Any], read_timeout_s: float | None = None,
              job_id: str | None = None) -> dict:
        """Generate an image from the payload (``prompt`` and options, camelCase mapped).

        Same outcomes and parameters as :meth:`article`.
        """
        if not isinstance(payload, dict):
            raise PermanentError(f"payload must be an object, got {type(payload).__name__}")
        return self.post(self.image_path, payload, snake_keys(payload), read_timeout_s, job_id)

    def timeouts(self, read_timeout_s: float | None) -> tuple[float, float]:
        """(connect, read) for one call: the shorter of the client's and the call's read."""
        read = self.read_timeout_s if read_timeout_s is None else min(
            self.read_timeout_s, read_timeout_s)
        return self.connect_timeout_s, read

    def post(self, path: str, payload: dict[str, Any], body: dict[str, Any],
             read_timeout_s: float | None, job_id: str | None = None,
             on_words: Callable[[int], None] | None = None) -> dict:
        data = encode_body(payload, body)
        timeout = self.timeouts(read_timeout_s)
        if timeout[1] <= 0:
            raise GenerationUnavailable("no time left for the call")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if job_id:
            headers[JOB_ID_HEADER] = job_id
        streamed = on_words is not None and self.stream in streaming.ACCEPT
        if streamed:
            headers["Accept"] = streaming.ACCEPT[self.stream]
        # The whole call, a stream included, ends within its read timeout (the job's
        # time left): a stream that keeps sending keep-alives must not outlive the job.
        deadline = time.monotonic() + timeout[1]
        try:
            response = self.session.post(
                self.base_url + path, data=data, timeout=timeout, allow_redirects=False,
                headers=headers, stream=streamed)
            kind = streaming.stream_kind(response.headers.get("Content-Type", ""))
            if streamed and kind and 200 <= response.status_code < 300:
                return self.read_stream(response, kind, on_words, deadline)
            if streamed:
                with response:  # a plain answer to a streamed ask: its body read here,
                    _ = response.content  # under the same handlers (a stall is transient)
        except requests.ConnectTimeout:
            raise self.unavailable(f"connect timed out after {timeout[0]:g}s") from None
        except requests.ReadTimeout:
            raise self.unavailable(f"read timed out after {timeout[1]:g}s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise self.unavailable(connection_reason(exc)) from None
        except urllib3.exceptions.ReadTimeoutError:  # a stream's own reads (``arrived``)
            raise self.unavailable(f"read timed out after {timeout[1]:g}s") from None
        except urllib3.exceptions.HTTPError as exc:
            raise self.unavailable(connection_reason(exc)) from None
        return self.outcome(response)

    def read_stream(self, response: requests.Response, kind: str,
                    on_words: Callable[[int], None] | None, deadline: float) -> dict:
        """A streamed answer's result (``pipeline/streaming.py``); a broken stream, or one
        still running at ``deadline`` (monotonic), is transient. Read timeouts and resets
        while reading reach ``post``'s handlers."""
        with response:
            try:
                return streaming.read_stream(streaming.lines_of(streaming.arrived(response)), kind,
                                             on_words, deadline)
            except streaming.StreamBroken as exc:
                raise GenerationUnavailable(self.scrub(str(exc)), response.status_code) \
                    from None

    def unavailable(self, reason: str) -> GenerationUnavailable:
        return GenerationUnavailable(f"{self.scrub(reason)} ({self.safe_base_url})")

    def scrub(self, text: str) -> str:
        return text.replace(self.userinfo, "***") if self.userinfo else text

    def outcome(self, response: requests.Response) -> dict:
        """The JSON object of a 2xx answer, or the error its status means."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                doc = response.json()
            except ValueError:
                doc, problem = None, "not JSON"
            else:
                problem = f"a JSON {type(doc).__name__}, not an object"
            if isinstance(doc, dict):
                return doc
            snippet = self.scrub(response.text[:SNIPPET_CHARS])
            raise PermanentError(
                f"generation service returned a non-JSON response (HTTP {status}, {problem}): "
                f"{snippet!r}")
        message = self.scrub(service_message(response))
        if status in TRANSIENT_4XX:
            raise GenerationUnavailable(message, status, retry_after_s(response))
        if 400 <= status < 500:
            raise PermanentError(f"generation service refused the request (HTTP {status}): "
                                 f"{message}")
        if status >= 500:  # with a Retry-After (a 503's), the provider pauses that long
            raise GenerationUnavailable(message, status, retry_after_s(response))
        # 1xx/3xx: a redirect is a misconfigured fastapi_url, not this message's fault.
        raise GenerationUnavailable(
            f"unexpected answer (redirects are not followed; check fastapi_url "
            f"{self.safe_base_url})", status)
