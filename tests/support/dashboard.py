"""HTTP helpers for the dashboard's tests (a real uvicorn, httpx): sign in, read a page's
CSRF token, post an action's form."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def signed_in(api, key: str, **kwargs) -> Iterator[httpx.Client]:
    """A client holding a dashboard session made with ``key`` (asserts the sign-in worked)."""
    with api.client(**kwargs) as client:
        answer = client.post("/dashboard/login", data={"key": key, "next": "/dashboard/jobs"})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/dashboard/jobs"
        yield client


def csrf_of(client: httpx.Client, path: str) -> str:
    """The CSRF token the page at ``path`` carries in its forms."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF_RE.search(page.text)
    assert found, f"no CSRF token in {path}"
    return found.group(1)


def make_jobs(store, count: int, *, user: str = "user-1", status_every: dict | None = None,
              type_: str = "articles", start: datetime | None = None) -> list[str]:
    """``count`` queued jobs one second apart (oldest first); returns their ids."""
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for n in range(count):
        job_id = f"job-{user}-{n:04d}"
        store.create_job(job_id, user, type_, {"topic": f"topic {n}"},
                         start + timedelta(seconds=n))
        ids.append(job_id)
    return ids
