"""A job's Server-Sent Events: its status and progress as they change, until it ends.

Both stores are polled (one ``get_job`` every ``web_events_poll_s``, ``Jobs.read_job``):
the store keeps only a job's latest step, so steps shorter than the interval may be
skipped; the end is never missed. MongoDB change streams (a replica set only) would push
instead of poll: a later option (docs/api.md).

Events::

    event: job        data: the job (models.Job), on each status/progress/message change
    event: end        data: the job, once it is completed, failed or cancelled; the stream closes
    : keepalive       a comment every KEEPALIVE_S, so proxies keep the connection open
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

TERMINAL = ("completed", "failed", "cancelled")
KEEPALIVE_S = 15.0


def frame(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def job_events(jobs, job_id: str, poll_s: float,
                     view: Callable[[dict[str, Any]], dict[str, Any]]) -> AsyncIterator[str]:
    last: tuple | None = None
    sent = 0
    quiet_since = time.monotonic()
    while True:
        job = await jobs.read_job(job_id)
        if job is None:  # deleted under us: nothing more will come
            return
        state = (job.get("status"), job.get("progress"), job.get("message"))
        if state != last:
            last, sent, quiet_since = state, sent + 1, time.monotonic()
            yield frame("job", view(job), sent)
        if state[0] in TERMINAL:
            yield frame("end", view(job), sent + 1)
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(poll_s)
