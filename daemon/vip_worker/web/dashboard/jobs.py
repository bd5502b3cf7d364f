"""The jobs pages: search (``store.search_jobs``, cursor pages), a job's timeline, and the
two actions, cancel (``store.request_cancel``, as the API's cancel route) and retry
(``store.retry_job``, then its message sent again through the producer, as the API's
create).

The job list is the fragment ``_jobs_live.html``. Its most watched view, the newest jobs
unfiltered (``newest``), is live: the shared producer (live.py) reads it with ONE
``search_jobs`` per interval and sends it to every browser as the ``jobs-live`` fragment. A
search or an older page is not live (it says so: reload to refresh), so no browser causes
a read of its own."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from vip_worker.store import STATUSES, CancelOutcome
from vip_worker.web.auth import USER_ID_RE
from vip_worker.web.dashboard.session import Session, log_action

JOB_ID_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")
TYPE_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
PAGE_SIZE = 50
CANCELLABLE = ("queued", "processing")
DONE = {"cancel": "Cancellation requested.", "cancelled": "The job is cancelled.",
        "retried": "The job is queued again."}


def bad(field: str, why: str) -> HTTPException:
    return HTTPException(422, f"{field}: {why}")


def parse_time(field: str, text: str) -> datetime | None:
    """An ISO time (a form's ``datetime-local`` has no zone: UTC), or None when empty."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad(field, "a time such as 2026-01-31T14:00 (UTC)") from None


def filters(job_id: str, user_id: str, status: str, type_: str, since: str,
            until: str) -> dict[str, Any]:
    """The search's keyword arguments from the form's text fields (empty: not filtered);
    422 naming the field for a bad value."""
    found: dict[str, Any] = {}
    for name, value, pattern in (("job_id", job_id, JOB_ID_RE), ("user_id", user_id, USER_ID_RE),
                                 ("type", type_, TYPE_RE)):
        value = value.strip()
        if value and not pattern.match(value):
            raise bad(name, f"not a valid {name.replace('_', ' ')}")
        if value:
            found[name] = value
    if status:
        if status not in STATUSES:
            raise bad("status", f"one of {', '.join(STATUSES)}")
        found["status"] = status
    found["since"], found["until"] = parse_time("since", since), parse_time("until", until)
    return {k: v for k, v in found.items() if v is not None}


def timeline(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's ``history``; for a job written before history existed, what its
    timestamps tell."""
    if job.get("history"):
        return list(job["history"])
    steps = [("created", job.get("createdAt")), ("claimed", job.get("startedAt")),
             ("cancel_requested", job.get("cancelRequestedAt")),
             ("cancelled", job.get("cancelledAt")), ("completed", job.get("completedAt"))]
    entries = [{"at": at, "event": event, "attempt": None, "by": None, "reason": None}
               for event, at in steps if at]
    if job.get("status") == "failed":
        entries.append({"at": job.get("updatedAt"), "event": "failed", "attempt": None,
                        "by": None, "reason": job.get("error")})
    return entries


def listing(found: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """The list fragment's context from one ``search_jobs(limit=PAGE_SIZE + 1)``: the page,
    and the next page's query (None on the last page)."""
    from vip_worker.web.app import encode_cursor

    page, next_query = found[:PAGE_SIZE], None
    if len(found) > PAGE_SIZE:
        next_query = {**{k: v for k, v in query.items() if v},
                      "cursor": encode_cursor(page[-1])}
    return {"jobs": page, "next_query": next_query}


async def newest(dash) -> dict[str, Any]:
    """The newest jobs, unfiltered (the live list's context): one indexed search."""
    return listing(await dash.call(dash.store.search_jobs, limit=PAGE_SIZE + 1), {})


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def add_routes(app, dash) -> None:
    from vip_worker.web.app import decode_cursor

    Viewer = Annotated[Session, Depends(dash.viewer)]

    @app.get("/jobs", name="jobs")
    async def search(request: Request, session: Viewer, job_id: str = "", user_id: str = "",
                     status: str = "", type: str = "", since: str = "",  # noqa: A002
                     until: str = "", cursor: str = ""):
        query = {"job_id": job_id, "user_id": user_id, "status": status, "type": type,
                 "since": since, "until": until}
        if any(len(v) > 200 for v in (*query.values(), cursor)):
            raise bad("query", "a field is too long")
        wanted = filters(job_id, user_id, status, type, since, until)
        live = not any(query.values()) and not cursor  # the newest jobs, as the stream's
        after = decode_cursor(cursor) if cursor else None
        found = await dash.call(dash.store.search_jobs, **wanted, after=after,
                                limit=PAGE_SIZE + 1)
        if job_id and not found and not cursor:
            # A job id is exact: open it when it exists, whatever the other filters say.
            job = await dash.call(dash.store.get_job, job_id)
            if job is not None:
                found = [job]
        if job_id and len(found[:PAGE_SIZE]) == 1 and not cursor:
            return RedirectResponse(f"{request.scope['root_path']}/jobs/{found[0]['_id']}",
                                    status_code=303)
        return dash.render(request, "jobs.html", session, active="jobs", query=query,
                           statuses=STATUSES, types=[q.name for q in dash.settings.queues],
                           live=live, refresh_s=dash.settings.dashboard_refresh_s,
                           **listing(found, query))

    async def get(job_id: str) -> dict[str, Any]:
        if not JOB_ID_RE.match(job_id):
            raise HTTPException(404, "no such job")
        job = await dash.call(dash.store.get_job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/jobs/{job_id}", name="job")
    async def job_page(request: Request, session: Viewer, job_id: str, done: str = ""):
        job = await get(job_id)
        content = None
        if job.get("status") == "completed":
            collection = (dash.settings.media_collection if job.get("type") == "images"
                          else dash.settings.content_collection)
            content = await dash.call(dash.store.get_content, collection, job_id)
        return dash.render(
            request, "job.html", session, active="jobs", job=job, timeline=timeline(job),
            params=pretty(job.get("params")), result=pretty(content) if content else None,
            usage=job.get("usage"),
            checkpoints=pretty(job["checkpoints"]) if job.get("checkpoints") else None,
            can_cancel=job.get("status") in CANCELLABLE,
            can_retry=job.get("status") == "failed",
            flashes=[DONE[done]] if done in DONE else [])

    def confirm_page(request, session, job, action: str, question: str, button: str):
        if not session.can_act:
            raise HTTPException(403, "this session is read-only (a viewer key)")
        base = request.scope["root_path"]
        return dash.render(request, "confirm.html", session, active="jobs", question=question,
                           details=[f"Job {job['_id']} ({job.get('type')}, "
                                    f"{job.get('status')}), user {job.get('userId')}"],
                           action=f"{base}/jobs/{job['_id']}/{action}", button=button,
                           back=f"{base}/jobs/{job['_id']}")

    @app.get("/jobs/{job_id}/cancel", name="confirm_cancel")
    async def confirm_cancel(request: Request, session: Viewer, job_id: str):
        return confirm_page(request, session, await get(job_id), "cancel",
                            "Cancel this job?", "Yes, cancel the job")

    @app.post("/jobs/{job_id}/cancel", name="cancel")
    async def cancel(request: Request, job_id: str):
        session, _ = await dash.act(request)
        await get(job_id)
        done = await dash.call(dash.store.request_cancel, job_id, datetime.now(UTC))
        log_action(session, "cancel", job_id=job_id, outcome=done.outcome.value)
        if done.outcome is CancelOutcome.NOT_FOUND:
            raise HTTPException(404, f"no job {job_id}")
        if done.outcome is CancelOutcome.REFUSED:
            raise HTTPException(409, f"the job is {done.job.get('status')}: nothing to cancel")
        flash = "cancelled" if done.outcome is CancelOutcome.CANCELLED else "cancel"
        return RedirectResponse(f"{request.scope['root_path']}/jobs/{job_id}?done={flash}",
                                status_code=303)

    @app.get("/jobs/{job_id}/retry", name="confirm_retry")
    async def confirm_retry(request: Request, session: Viewer, job_id: str):
        return confirm_page(request, session, await get(job_id), "retry",
                            "Retry this failed job?", "Yes, retry the job")

    @app.post("/jobs/{job_id}/retry", name="retry")
    async def retry(request: Request, job_id: str):
        session, _ = await dash.act(request)
        await get(job_id)
        job = await dash.call(dash.store.retry_job, job_id, datetime.now(UTC))
        if job is None:
            log_action(session, "retry", job_id=job_id, outcome="refused")
            raise HTTPException(409, "only a failed job can be retried")
        try:
            await resend(job)
        except HTTPException:
            log_action(session, "retry", job_id=job_id, outcome="send_failed")
            raise
        log_action(session, "retry", job_id=job_id, outcome="queued")
        return RedirectResponse(f"{request.scope['root_path']}/jobs/{job_id}?done=retried",
                                status_code=303)

    async def resend(job: dict[str, Any]) -> None:
        """The retried job's message, through the producer (create_job finds the job made
        already); without a queue for its type, run on the API's inline thread."""
        kind, params, user = job["type"], job.get("params") or {}, str(job["userId"])
        jobs = dash.jobs
        if jobs.producer.is_sqs_configured(kind):
            from vip_worker.pipeline.producer import SendFailed

            try:
                await dash.call(jobs.producer.enqueue, kind, params, user_id=user,
                                job_id=str(job["_id"]))
            except SendFailed as exc:
                raise HTTPException(503, f"the job is queued but its message could not be "
                                         f"sent: {exc}") from None
            return
        future = asyncio.get_running_loop().run_in_executor(
            jobs.inline, jobs.run_inline, kind, params, user, str(job["_id"]))
        future.add_done_callback(lambda f: f.exception())
