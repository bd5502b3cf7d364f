"""Reading the generation service's streamed answer: NDJSON or Server-Sent Events.

With ``generation_stream`` other than ``off``, an article call says in its ``Accept``
header that it takes a stream (``auto``: either, NDJSON first; ``ndjson``; ``sse``) and
still JSON, so a service that does not stream answers as before. A streamed answer is a
sequence of events, each one JSON object:

- ``{"delta": "<text>"}``: more of the article; its words are counted as they come and
  handed to ``on_words(total_words)`` (the pipeline turns that into progress against the
  payload's ``wordCount``);
- ``{"done": true, "result": {...}}``: the end; ``result`` is the answer a non-streaming
  call returns (title, content, usage...);
- ``{"error": "<message>"}``: the service failed midway (transient).

NDJSON sends one object a line (``application/x-ndjson``); SSE sends them as the
``data:`` of ``event:`` blocks (``text/event-stream``; the event name is not needed,
the object says what it is). A stream that ends before ``done`` is transient (the
connection broke); a line that is not a JSON object is the service's fault (permanent,
as a non-JSON answer is).

Every line counts: keep-alives (SSE ``:`` comments, blank NDJSON lines) count toward
``MAX_STREAM_BYTES``, and each line is checked against the call's deadline (monotonic):
a stream still running then is cut (``StreamBroken``, "deadline ..."), however steadily
it sends bytes.
"""

from __future__ import annotations

import codecs
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vip_worker.errors import PermanentError

NDJSON, SSE = "application/x-ndjson", "text/event-stream"
ACCEPT = {
    "auto": f"{NDJSON}, {SSE};q=0.9, application/json;q=0.5",
    "ndjson": f"{NDJSON}, application/json;q=0.5",
    "sse": f"{SSE}, application/json;q=0.5",
}
MAX_STREAM_BYTES = 4 * 1024 * 1024  # an article of 20,000 words is ~150 KB
LINE_BREAK = re.compile(r"\r\n|\r|\n")
READ_BYTES = 512  # at most, per read of a streamed body


class StreamBroken(Exception):
    """The stream ended before its result, or the service reported an error in it."""


def stream_kind(content_type: str) -> str | None:
    """``"ndjson"``, ``"sse"``, or None (not a stream: one JSON answer)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return {NDJSON: "ndjson", SSE: "sse"}.get(media)


def arrived(response: Any) -> Iterator[bytes]:
    """A streamed ``requests`` response's bytes as they arrive (one socket read each, so
    each line is seen, and the deadline checked, when it comes: ``iter_content`` would
    wait for a whole block of a body sent without chunked encoding)."""
    while True:
        data = response.raw.read1(READ_BYTES, decode_content=True)
        if not data:
            return
        yield data


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """The body's lines, decoded as UTF-8, split at ``\r\n``, ``\r`` or ``\n`` as the
    SSE format says, a ``\r\n`` split across two chunks being one break (``requests``'
    ``iter_lines`` makes it two, and the blank line between would cut an SSE event).

    :raises PermanentError: a line longer than ``MAX_STREAM_BYTES``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    for chunk in chunks:
        text = pending + decoder.decode(chunk)
        held = "\r" if text.endswith("\r") else ""  # its "\n" may open the next chunk
        parts = LINE_BREAK.split(text[:-1] if held else text)
        pending = parts.pop() + held
        if len(pending) > MAX_STREAM_BYTES:
            raise PermanentError(f"generation stream longer than {MAX_STREAM_BYTES} bytes")
        yield from parts
    parts = LINE_BREAK.split(pending + decoder.decode(b"", final=True))
    yield from (parts[:-1] if parts[-1] == "" else parts)


def ndjson_events(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.strip():
            yield line


def sse_events(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each SSE event (its ``data:`` lines joined), comments skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # "event:", "id:", "retry:" and ":" comments carry nothing we need
    if data:
        yield "\n".join(data)


def bounded(lines: Iterable[str], deadline: float | None,
            clock: Callable[[], float]) -> Iterator[str]:
    """``lines``, each one (keep-alives and blank lines too) counted toward
    ``MAX_STREAM_BYTES`` and checked against ``deadline``."""
    size = 0
    for line in lines:
        if deadline is not None and clock() >= deadline:
            raise StreamBroken(f"deadline: the stream was still running when the call's "
                               f"time ran out (after {size} bytes)")
        size += len(line) + 1  # its newline
        if size > MAX_STREAM_BYTES:
            raise PermanentError(f"generation stream longer than {MAX_STREAM_BYTES} bytes")
        yield line


def read_stream(lines: Iterable[str], kind: str, on_words: Callable[[int], None] | None,
                deadline: float | None = None, clock: Callable[[], float] = time.monotonic
                ) -> dict[str, Any]:
    """The ``result`` of a streamed answer, calling ``on_words`` as its words arrive.

    :param lines: the decoded lines of the body (``response.iter_lines``).
    :param deadline: when (``clock``, monotonic seconds) the stream must have ended.
    :raises StreamBroken: it ended before ``done``, carried an ``error``, or was still
        running at ``deadline``.
    :raises PermanentError: an event that is not a JSON object, or a stream too long.
    """
    words = 0
    lines = bounded(lines, deadline, clock)
    events = ndjson_events(lines) if kind == "ndjson" else sse_events(lines)
    for text in events:
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise PermanentError(f"generation stream sent an event that is not a JSON "
                                 f"object: {text[:200]!r}")
        if event.get("error"):
            raise StreamBroken(f"the service reported an error mid-stream: "
                               f"{str(event['error'])[:300]}")
        if event.get("done"):
            result = event.get("result")
            if not isinstance(result, dict):
                raise PermanentError("generation stream ended without a result object")
            return result
        delta = event.get("delta")
        if isinstance(delta, str) and delta.strip():
            words += len(delta.split())
            if on_words is not None:
                on_words(words)
    raise StreamBroken(f"the stream ended before its result (after {words} words)")
