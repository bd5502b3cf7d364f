"""The content pipeline a generation handler runs: claim, generate, save, with progress.

The articles and images plugins are thin: each names its generation call and its
content collection, and ``run_job`` does the rest, the same way for both::

    queued --claim--> processing (10 "Generating content...")
           --generate--> (80 "Saving content...") --save--> completed (100)

Checkpoints: the generated content is checkpointed on the job (``ctx.checkpoint``,
name ``generated``) right after the call succeeds, before it is saved; an attempt that
finds that checkpoint (a store write, a poller or an instance failed after a paid
generation) saves it without calling the service again (``job.checkpoint_used``).

Cancellation: ``ctx.raise_if_cancelled()`` before generating and before saving, so a
job cancelled meanwhile stops between its steps (``JobCancelled``: the daemon deletes the
message, the job ends ``cancelled``) and never saves a result.

Failures: a ``PermanentError`` (bad request, a 4xx from the service, a reply
that is not the expected JSON) marks the job ``failed`` with the reason before
the core dead-letters the message. A transient one (5xx, timeout, reset) puts
the job back to ``queued`` with the reason as its message, unless this was the
last attempt, when the job is marked ``failed`` first. An outage of the job store
itself is only retried: the job cannot be, and is not, marked failed for it.

In the daemon the consumer has claimed the job already (``ctx.delivery`` is set) and
settles it after the handler; ``run_job`` then skips its own claim (a second claim would
stretch the daemon's short lease to ``max_job_time_s``) and guards its settles with the
delivery. Without a daemon claim (``vip_worker.testing.run_handler``, the producer's
inline run, a queue with ``track_jobs`` off) it claims the job itself, as before.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from vip_worker.errors import Deferred, PermanentError, RetryLater
from vip_worker.pipeline import progress, spill, usage
from vip_worker.services.metrics import USAGE as USAGE_METRICS
from vip_worker.services.metrics import UsageMetrics
from vip_worker.store import Claim, ClaimOutcome, StoreUnavailable
from vip_worker.store.checkpoints import CheckpointError

GENERATION_CLIENT = "vip_worker.pipeline.generation"  # key in the poller's resources
BUSY_RETRY_MAX_S = 300.0
ERROR_MAX = 1000
GENERATED = "generated"  # the checkpoint of the generation call's result
CHECKPOINT_RETRY_S = (1.0, 2.0, 4.0, 8.0)  # waits between checkpoint writes in an outage


def now() -> datetime:
    return datetime.now(UTC)


def generation_client(context):
    """The poller's one generation client (a requests Session), made on first use."""
    client = context.resources.get(GENERATION_CLIENT)
    if client is None:
        from vip_worker.pipeline.generation import GenerationClient

        settings = context.settings
        client = GenerationClient(
            settings.fastapi_url,
            article_path=settings.article_path,
            image_path=settings.image_path,
            modes=settings.article_modes,
            connect_timeout_s=settings.generation_connect_timeout_s,
            read_timeout_s=settings.generation_read_timeout_s,
            pool_maxsize=settings.concurrency,  # one connection per handler thread
            stream=getattr(settings, "generation_stream", "off"),
        )
        context.resources[GENERATION_CLIENT] = client
    return client


def close_generation_client(context) -> None:
    client = context.resources.pop(GENERATION_CLIENT, None)
    if client is not None:
        client.close()


def run_job(message, ctx, generate: Callable[..., dict[str, Any]], collection: str) -> None:
    """Claim the job, call ``generate()`` (or take its checkpoint), save its result;
    classify every failure. A ``generate(on_words)`` is handed a callback for the words
    a streamed answer has produced so far (progress follows them, ``pipeline/progress.py``);
    any other ``generate`` gets estimated progress."""
    store = ctx.store
    if ctx.delivery is None:
        claim = claim_job(message, ctx)
        if claim is None:
            return
        ctx.load_checkpoints(claim.job)
    ctx.raise_if_cancelled()  # asked while it waited: never call the service
    result, source = ctx.checkpoints.get(GENERATED), "store"
    if not isinstance(result, dict):
        result, source = spill.recover(ctx, message.job_id), "disk"
    if isinstance(result, dict):
        # An earlier attempt paid for this generation and failed after it (the store
        # write, its poller, its instance): save that content, never call again.
        ctx.log.info("job.checkpoint_used", extra={"checkpoint": GENERATED, "source": source})
    else:
        try:
            check_budget(message, ctx)
            result = generate_once(message, ctx, generate)
        except Deferred as exc:
            if ctx.delivery is None:  # run_job's own claim: no consumer to hand it back
                release_deferred(message, ctx, exc)
            raise
    ctx.raise_if_cancelled()  # asked during the generation call: save nothing
    ctx.progress(80, "Saving content...")
    store.save_result(message.job_id, collection, result, now())
    spill.clear(ctx, message.job_id)
    spend(message, ctx, result.get("usage"))
    ctx.log.info("job.completed", extra={"collection": collection})


def check_budget(message, ctx) -> None:
    """Before a generation call: stop a user whose spending today reached their budget.

    :raises Deferred: ``budget_outcome = "defer"``: until the next UTC day.
    :raises PermanentError: ``budget_outcome = "fail"``; the job is failed first.
    """
    budget = usage.daily_budget(ctx.settings, message.user_id)
    if budget <= 0:
        return
    started = now()
    spent = ctx.store.spent(message.user_id, started.date())
    if spent < budget:
        return
    fields = {"user_id": message.user_id, "spent": round(spent, 6), "budget": budget}
    reason = usage.BUDGET_EXCEEDED
    if getattr(ctx.settings, "budget_outcome", "defer") == "fail":
        ctx.log.warning("job.budget_exceeded", extra={**fields, "outcome": "fail"})
        ctx.store.fail(message.job_id, reason, started, message_id=ctx.message_id,
                       delivery=ctx.delivery)
        raise PermanentError(reason)
    delay_s = usage.until_next_day_s(started)
    ctx.log.info("job.budget_exceeded", extra={**fields, "outcome": "defer",
                                                "delay_s": round(delay_s)})
    raise Deferred(reason, delay_s)


def release_deferred(message, ctx, deferred: Deferred) -> None:
    """A job ``run_job`` claimed itself (an untracked queue) and that is deferred: it goes
    back to ``queued`` with its attempt refunded, as the consumer does for a claim of
    its own (a deferral is not a failure)."""
    ctx.store.release(message.job_id, None, now(), getattr(deferred, "reason", None)
                      or str(deferred), event="deferred", delay_s=deferred.delay_s or 0.0)


def with_usage(ctx, result: dict[str, Any]) -> dict[str, Any]:
    """The result with its ``usage`` in the job's shape (tokens, images, model, cost),
    when the service reported any."""
    prices = getattr(ctx.settings, "prices", None) or {}
    found = usage.job_usage(result, prices)
    if found is None:
        return result
    if found["cost"] is None and getattr(ctx.settings, "prices", None):
        # Only with a price table: without one every job is unpriced, and a line per job
        # on the default path would say nothing.
        ctx.log.info("usage.unpriced", extra={"model": found["model"]})
    return {**result, "usage": found}


def spend(message, ctx, found: Any) -> None:
    """A completed job's usage: counted for the metrics and the per-minute buckets (in
    memory, ``services/metrics.UsageMetrics``), and its cost added to its user's
    spending today (one atomic increment)."""
    if not isinstance(found, dict):
        return
    at = now()
    # The poller's usage counter (drained with the metrics); setdefault is atomic.
    ctx.resources.setdefault(USAGE_METRICS, UsageMetrics()).record(
        message.type, message.user_id, found, at)
    if found.get("cost"):
        ctx.store.add_spend(message.user_id, at.date(), float(found["cost"]), at)


def generate_once(message, ctx, generate: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Call ``generate()``, checkpoint its result before anything else can fail."""
    store = ctx.store
    guard = {"message_id": ctx.message_id, "delivery": ctx.delivery}
    reporter = progress.ProgressReporter(ctx)
    reporter.begin("Generating content...")  # batched: a quota deferral never writes it
    estimator = progress.Estimator(reporter, progress.median_duration_s(ctx, message.type))
    wanted = progress.wanted_words(message.payload)
    started = time.monotonic()
    try:
        estimator.start()
        if takes_on_words(generate):
            result = generate(on_words=lambda count: reporter.words(count, wanted))
        else:
            result = generate()
    except PermanentError as exc:
        store.fail(message.job_id, readable(exc), now(), **guard)
        raise
    except (StoreUnavailable, Deferred):  # Deferred: the daemon releases the job, unsettled
        raise
    except Exception as exc:
        if ctx.is_last_attempt:
            store.fail(message.job_id, f"gave up after {ctx.attempt} attempts: "
                                       f"{readable(exc)}", now(), **guard)
        else:
            store.requeue(message.job_id, f"Retrying after: {readable(exc)}", now(), **guard)
        raise
    finally:
        estimator.stop()
    progress.record_duration(ctx, message.type, time.monotonic() - started)
    ctx.log.info("job.generated")  # paid for: the chaos test counts these per job
    result = with_usage(ctx, result)
    keep_generated(ctx, result)
    return result


def takes_on_words(generate: Callable[..., dict[str, Any]]) -> bool:
    """Whether the plugin's ``generate`` takes ``on_words`` (a streamed call's word count,
    for progress that follows it); older ones take no argument."""
    try:
        return "on_words" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False


def keep_generated(ctx, result: dict[str, Any]) -> None:
    """Checkpoint the generated content before anything else can fail.

    The generation is paid for: while the store is down the result is kept on local disk
    (``pipeline/spill.py``, for an attempt after this poller's death) and the checkpoint
    is tried again (``CHECKPOINT_RETRY_S``, as long as the job has time and is not
    cancelled) rather than lose the result. Too large for a checkpoint, or the store still
    down: logged, and the content is saved without one (a failure before that save then
    pays for the generation again, unless it finds the file on this host).
    """
    spilled = False
    for delay_s in (*CHECKPOINT_RETRY_S, None):
        try:
            if ctx.checkpoint(GENERATED, result):
                ctx.log.info("job.checkpointed", extra={"checkpoint": GENERATED})
            else:  # another delivery took the job meanwhile: not ours to write
                ctx.log.warning("job.checkpoint_refused", extra={"checkpoint": GENERATED})
            return
        except CheckpointError as exc:
            ctx.log.warning("job.checkpoint_skipped", extra={"checkpoint": GENERATED,
                                                             "error": str(exc)})
            return
        except StoreUnavailable as exc:
            if not spilled:  # the poller may die before the store is back: keep it on disk
                spilled = spill.spill(ctx, ctx.job_id, result)
            if delay_s is None or ctx.time_left_s < 2 * delay_s or ctx.cancelled:
                ctx.log.warning("job.checkpoint_failed", extra={"checkpoint": GENERATED,
                                                                "error": str(exc)[:300]})
                return
            ctx.log.warning("job.checkpoint_retry", extra={"checkpoint": GENERATED,
                                                           "delay_s": delay_s})
            ctx.cancel_event.wait(delay_s)  # a cancellation ends the wait


def claim_job(message, ctx) -> Claim | None:
    """``run_job``'s own claim, when the daemon did not claim the job; None: the job
    is completed or cancelled already, nothing to do.

    :raises RetryLater: another delivery holds the job.
    """
    claim = ctx.store.claim(message.job_id, user_id=message.user_id, type=message.type,
                            params=message.payload, message_id=ctx.message_id,
                            lease_s=max(ctx.time_left_s, 1.0), now=now())
    if claim.outcome is ClaimOutcome.COMPLETED:
        ctx.log.info("job.already_completed")
        return None
    if claim.outcome is ClaimOutcome.CANCELLED:
        ctx.log.info("job.cancelled")
        return None
    if claim.outcome is ClaimOutcome.BUSY:
        wait_s = (claim.lease_until - now()).total_seconds() if claim.lease_until else 60.0
        raise RetryLater("job is being processed by another delivery",
                         delay_s=min(max(wait_s, 1.0), BUSY_RETRY_MAX_S))
    return claim


def readable(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:ERROR_MAX]
