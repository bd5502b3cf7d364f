"""The job API's routes (docs/api.md): ``create_app(settings)`` -> a FastAPI app.

Every route but ``/api/health`` depends on ``Authenticator`` (auth.py): its auth is
stated in its OpenAPI description. A caller only ever sees its own user's jobs: another
user's job answers 404, exactly as a missing one, so ids cannot be probed.

Jobs are created through the producer (the CLI's ``enqueue``): the job in the store,
then the message in the app's envelope to the type's queue. Without a queue for the type
the producer's inline mode runs the job in this process, on one background thread, and
the answer is still 202. Store and SQS calls block, so they run in the thread pool, but
for a job read by id from an SQLite file store, done on the event loop by its own
connection (store/sqlite_reader.py says why that is safe and cheaper).
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures' types,
# which name models made inside create_app.
import asyncio
import base64
import binascii
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from vip_worker.errors import DependencyUnavailable
from vip_worker.store import STATUSES, CancelOutcome
from vip_worker.store.sqlite_reader import Busy, SqliteReader
from vip_worker.web import events, models
from vip_worker.web.auth import Authenticator, Caller
from vip_worker.web.keys import KeyRing, keys_path
from vip_worker.web.limits import BodyLimit, RateLimiter, retry_after

log = logging.getLogger("vip_worker.web")
JOB_ID = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
IDEMPOTENCY_KEY = Header(default=None, min_length=1, max_length=255)
ERRORS = {401: {"model": models.Error}, 404: {"model": models.Error},
          422: {"model": models.Error}}
CREATE_ERRORS = {**ERRORS, 409: {"model": models.Error}, 413: {"model": models.Error},
                 429: {"model": models.Error}, 503: {"model": models.Error}}
UNSET = object()
AUTH = ("Auth: an API key (a backend key names the user in X-User-Id) or the app's "
        "session token; open on loopback when neither is configured.")


def idempotent_job_id(user_id: str, key: str) -> str:
    """The job id an Idempotency-Key stands for: 24 hex digits (an ObjectId's shape) of
    sha256(user, key). Stored as the job's own id, it survives restarts with no table."""
    return hashlib.sha256(f"{user_id}\0{key}".encode()).hexdigest()[:24]


def encode_cursor(job: dict[str, Any]) -> str:
    created = job.get("createdAt") or datetime.fromtimestamp(0, UTC)
    raw = json.dumps([created.isoformat(), str(job["_id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        stamp, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("a cursor's time has its zone")
        when.astimezone(UTC)  # OverflowError at the edges of datetime's range
        return when, str(job_id)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise HTTPException(422, [{"loc": ["query", "cursor"], "type": "value_error",
                                   "msg": "not a cursor this API returned"}]) from None


def job_view(job: dict[str, Any], settings) -> dict[str, Any]:
    """A stored job as the API shows it (models.Job)."""
    job_id = str(job["_id"])
    result = None
    if job.get("status") == "completed":
        collection = (settings.media_collection if job.get("type") == "images"
                      else settings.content_collection)
        result = {"collection": collection, "jobId": job_id}
    base = f"/api/content/jobs/{job_id}"
    fields = ("type", "status", "message", "error", "createdAt", "updatedAt",
              "startedAt", "completedAt", "cancelRequestedAt", "cancelledAt")
    view = {name: job.get(name) for name in fields}
    usage = job.get("usage")
    view.update(jobId=job_id, progress=int(job.get("progress") or 0),
                progressEstimated=bool(job.get("progressEstimated")),
                usage=usage if isinstance(usage, dict) else None,
                attempts=int(job.get("attempts") or 0), result=result,
                links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"})
    return view


def check_callback_url(url: str | None, settings) -> None:
    """422 naming ``callbackUrl`` when the callback rules refuse it (its host is
    resolved and checked again before every attempt)."""
    from vip_worker.services.callbacks import AllowList, Refused

    if url is None:
        return
    try:
        AllowList(settings.callback_allowed_hosts).check(url)
    except Refused as exc:
        raise HTTPException(422, [{"loc": ["body", "callbackUrl"], "type": "value_error",
                                   "msg": str(exc)}]) from exc


def acting_user(caller: Caller) -> str:
    if caller.user_id is None:  # an admin key that named nobody
        raise HTTPException(422, [{"loc": ["header", "X-User-Id"], "type": "missing",
                                   "msg": "name the user this request acts for"}])
    return caller.user_id


class Jobs:
    """What the routes do with the store and the producer."""

    def __init__(self, settings, producer) -> None:
        self.settings = settings
        self.producer = producer
        self.limiter = RateLimiter(settings.web_rate_per_minute, settings.web_rate_burst)
        self.inline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-inline")
        self._reader: Any = UNSET  # SqliteReader | None, made on the first read

    @property
    def store(self):
        return self.producer.store

    async def create(self, kind: str, payload: dict[str, Any], caller: Caller,
                     idempotency_key: str | None) -> JSONResponse:
        user = acting_user(caller)
        check_callback_url(payload.get("callbackUrl"), self.settings)
        job_id = None
        if idempotency_key is not None:
            job_id = idempotent_job_id(user, idempotency_key)
            first = await self.call(self.store.get_job, job_id)
            if first is not None:
                if first.get("params") != payload or first.get("type") != kind:
                    raise HTTPException(409, "Idempotency-Key reused with another request")
                if first.get("status") == "failed" and not first.get("attempts"):
                    # Its message never reached the queue (the first answer was a 503):
                    # saying "queued" now would be a job that never runs.
                    raise HTTPException(
                        503, f"the first request with this Idempotency-Key could not be "
                             f"queued ({first.get('error')}); send it again with a new key",
                        headers={"Retry-After": "5"})
                return queued(job_id)
        wait_s = self.limiter.take(user)
        if wait_s:
            raise HTTPException(429, "too many jobs created; retry later",
                                headers={"Retry-After": retry_after(wait_s)})
        if self.producer.is_sqs_configured(kind):
            from vip_worker.pipeline.producer import SendFailed

            try:
                job_id = await self.call(self.producer.enqueue, kind, payload, user_id=user,
                                         job_id=job_id)
            except SendFailed as exc:  # its job is failed with the reason, or still queued
                log.error("web.send_failed", extra={"job_id": exc.job_id, "type": kind,
                                                    "error": str(exc)[:300]})
                raise HTTPException(503, f"the job could not be queued: {exc}",
                                    headers={"Retry-After": "5"}) from None
        else:
            job_id = await self.start_inline(kind, payload, user, job_id)
        log.info("web.job_created", extra={"job_id": job_id, "type": kind, "user_id": user})
        return queued(job_id)

    async def start_inline(self, kind: str, payload: dict[str, Any], user: str,
                           job_id: str | None) -> str:
        """Create the job now, run it on the inline thread; answer before it runs."""
        from vip_worker.pipeline.producer import NoHandler, new_job_id

        loop = asyncio.get_running_loop()
        try:  # plugins load (once) on the inline thread, as the runs do
            await loop.run_in_executor(self.inline, self.producer.inline_handler, kind)
        except NoHandler as exc:
            raise HTTPException(503, str(exc)) from None
        job_id = job_id or new_job_id()
        await self.call(self.store.create_job, job_id, user, kind, payload,
                        datetime.now(UTC))
        future = loop.run_in_executor(self.inline, self.run_inline, kind, payload, user, job_id)
        future.add_done_callback(lambda f: f.exception())  # never "exception not retrieved"
        return job_id

    def run_inline(self, kind: str, payload: dict[str, Any], user: str, job_id: str) -> None:
        try:  # enqueue finds the job made already (create_job: no change) and runs it
            self.producer.enqueue(kind, payload, user_id=user, job_id=job_id)
        except Exception as exc:  # noqa: BLE001 (a plugin's failure: the job's, never the server's)
            log.error("web.inline_failed", extra={"job_id": job_id, "error": repr(exc)})

    async def call(self, fn, *args, **kwargs):
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except DependencyUnavailable as exc:
            raise HTTPException(503, f"unavailable: {exc}", headers={"Retry-After": "5"}) from None

    async def read_job(self, job_id: str) -> dict[str, Any] | None:
        """``store.get_job``: on the event loop for an SQLite file (no thread hop), else,
        or when that reader is busy, in the thread pool."""
        if self._reader is UNSET:
            self._reader = SqliteReader.for_store(self.store)
        if self._reader is not None:
            try:
                return self._reader.get_job(job_id)
            except Busy:
                pass
        return await self.call(self.store.get_job, job_id)

    async def owned(self, job_id: str, caller: Caller) -> dict[str, Any]:
        job = await self.read_job(job_id)
        if job is None or not caller.sees(job):
            raise HTTPException(404, "no such job")
        return job

    async def cancel(self, job_id: str, caller: Caller) -> JSONResponse:
        """Ask for the job's cancellation: 200 and the job when it is ``cancelled`` now
        (it was queued), 202 when its poller ends it (running); 409 when it has ended."""
        await self.owned(job_id, caller)  # another user's job: 404
        done = await self.call(self.store.request_cancel, job_id, datetime.now(UTC))
        if done.outcome is CancelOutcome.NOT_FOUND:
            raise HTTPException(404, "no such job")
        if done.outcome is CancelOutcome.REFUSED:
            raise HTTPException(409, f"the job is {done.job.get('status')}: nothing to cancel")
        log.info("web.job_cancel_requested", extra={
            "job_id": job_id, "user_id": caller.user_id, "outcome": done.outcome.value})
        code = 200 if done.outcome is CancelOutcome.CANCELLED else 202
        return JSONResponse(models.Job(**job_view(done.job, self.settings)).model_dump(
            mode="json"), status_code=code)

    def close(self) -> None:
        self.inline.shutdown(wait=True)
        if self._reader not in (UNSET, None):
            self._reader.close()
        self.producer.close()


def job_response(view: dict[str, Any], adapter: TypeAdapter) -> Response:
    """``view`` as FastAPI's ``response_model=models.Job`` would send it (validated, then
    dumped by pydantic), without FastAPI's per-request serialization machinery."""
    return Response(adapter.dump_json(adapter.validate_python(view)),
                    media_type="application/json")


def queued(job_id: str) -> JSONResponse:
    return JSONResponse(models.Queued(jobId=job_id).model_dump(), status_code=202)


def create_app(settings, producer=None) -> FastAPI:
    """The API for ``settings``; ``producer``: a ``Producer`` (default: one made from them)."""
    if producer is None:
        from vip_worker.pipeline.producer import Producer

        producer = Producer(settings)
    jobs = Jobs(settings, producer)
    auth = Authenticator(settings, KeyRing(keys_path(settings)))
    Who = Annotated[Caller, Depends(auth)]
    Article = models.article_request(list(settings.article_modes))
    job_json = TypeAdapter(models.Job)

    @asynccontextmanager
    async def lifespan(app):
        if auth.open_access():
            log.warning("web.open_access", extra={
                "detail": "no API key or session token configured: open access on loopback"})
        yield
        await run_in_threadpool(jobs.close)

    app = FastAPI(title="vip-worker job API", version="1", lifespan=lifespan,
                  description="Create generation jobs and follow them. See docs/api.md.")
    app.state.jobs, app.state.auth = jobs, auth
    app.add_middleware(BodyLimit, max_bytes=settings.web_max_body_bytes)

    @app.get("/api/health", description="Auth: none. 200 while the process serves.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/content/generate", status_code=202, response_model=models.Queued,
              responses=CREATE_ERRORS, description="Queue an article job. " + AUTH)
    async def generate_content(body: Article, caller: Who,  # type: ignore[valid-type]
                               idempotency_key: str | None = IDEMPOTENCY_KEY):
        return await jobs.create("articles", body.model_dump(exclude_none=True), caller,
                                 idempotency_key)

    @app.post("/api/media/generate", status_code=202, response_model=models.Queued,
              responses=CREATE_ERRORS, description="Queue an image job. " + AUTH)
    async def generate_media(body: models.ImageRequest, caller: Who,
                             idempotency_key: str | None = IDEMPOTENCY_KEY):
        return await jobs.create("images", body.model_dump(exclude_none=True), caller,
                                 idempotency_key)

    @app.get("/api/content/jobs", response_model=models.JobPage, responses=ERRORS,
             description="The caller's jobs, newest first, a page at a time. " + AUTH)
    async def list_jobs(caller: Who, status: Literal[STATUSES] | None = None,  # type: ignore
                        limit: int = Query(20, ge=1, le=100),
                        cursor: str | None = Query(None, max_length=200,
                                                   pattern=r"^[A-Za-z0-9_-]+$")):
        after = decode_cursor(cursor) if cursor else None
        found = await jobs.call(jobs.store.user_jobs, acting_user(caller), status, limit + 1,
                                after)
        page = found[:limit]
        more = len(found) > limit
        return {"jobs": [job_view(j, settings) for j in page],
                "nextCursor": encode_cursor(page[-1]) if more else None}

    @app.get("/api/content/jobs/{jobId}", response_model=models.Job, responses=ERRORS,
             description="One job: status, progress, error, times, result. " + AUTH)
    async def get_job(caller: Who, jobId: str = JOB_ID):  # noqa: N803 (the app's name)
        # A Response is sent as it is: response_model above only documents the shape.
        return job_response(job_view(await jobs.owned(jobId, caller), settings), job_json)

    @app.post("/api/content/jobs/{jobId}/cancel", status_code=202, response_model=models.Job,
              responses={**ERRORS, 200: {"model": models.Job}, 409: {"model": models.Error},
                         503: {"model": models.Error}},
              description="Cancel a job: a queued one at once (200), a running one when its "
                          "poller stops it (202, within one heartbeat interval); 409 once "
                          "it has ended. " + AUTH)
    async def cancel_job(caller: Who, jobId: str = JOB_ID):  # noqa: N803
        return await jobs.cancel(jobId, caller)

    @app.get("/api/content/jobs/{jobId}/events", responses=ERRORS,
             response_class=StreamingResponse,
             description="Server-Sent Events: the job's status and progress until it ends. "
                         + AUTH)
    async def job_events(caller: Who, jobId: str = JOB_ID):  # noqa: N803
        await jobs.owned(jobId, caller)
        stream = events.job_events(jobs, jobId, settings.web_events_poll_s,
                                   lambda job: job_view(job, settings))
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    from vip_worker.web.dashboard import create_dashboard  # docs/dashboard.md

    app.mount("/dashboard", create_dashboard(settings, jobs, auth))
    return app
