"""The dead-letter pages: each configured queue's DLQ, its messages with their reasons
(``ops.dlq.peek``, as ``vip-worker dlq peek``), a message's body, and the actions: redrive
(the bounded redrive of ``ops.redrive`` with the CLI's journal) or delete, the selected
messages or all those matching the filter. SQS calls block: they run in the thread pool."""

# No ``from __future__ import annotations``: FastAPI reads the routes' types, which name
# the dependency made inside add_routes.
import json
import os
import re
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from vip_worker.ops.dlq import matcher, selector
from vip_worker.outcomes import ERROR_CLASS, ERROR_TEXT, SOURCE_QUEUE
from vip_worker.web.dashboard.session import Session, field, log_action

PEEK_MAX = 100  # messages shown per DLQ (each peek is a receive: it counts on the message)
FILTER_MAX = 200
MESSAGE_ID_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")
LOG_IDS = 50  # message ids per audit log line
ACTIONS = ("redrive", "delete")
SCOPES = ("selected", "matching")


class DeadLetters:
    """The blocking side: one DLQ's lookups, peeks and actions, through ``ops``."""

    def __init__(self, settings, producer) -> None:
        self.settings = settings
        self.producer = producer

    def client(self):
        return self.producer.client()

    def dlq_url(self, queue) -> str | None:
        from vip_worker.sqs.queues import resolve_dlq_url

        return resolve_dlq_url(self.client(), queue.url, queue.dlq_url)

    def overview(self, queue, matches) -> dict[str, Any]:
        """One queue's DLQ: its URL, depth and (up to PEEK_MAX) messages that match."""
        from vip_worker.ops import dlq
        from vip_worker.sqs.api import TRANSPORT_ERRORS
        from vip_worker.sqs.queues import counts

        try:
            url = self.dlq_url(queue)
            if not url:
                return {"queue": queue.name, "dlq": None, "messages": [], "error": None}
            depth = counts(self.client(), url)["depth"]
            messages, problems = dlq.peek(self.client(), url, PEEK_MAX)
        except (*TRANSPORT_ERRORS, ValueError) as exc:
            return {"queue": queue.name, "dlq": None, "messages": [],
                    "error": dlq.describe_error(exc)}
        from vip_worker.sqs.queues import queue_name

        return {"queue": queue.name, "dlq": queue_name(url), "depth": depth,
                "messages": [m for m in messages if matches(m)], "shown": len(messages),
                "problems": problems, "error": None}

    def message(self, queue, message_id: str) -> dict[str, Any] | None:
        from vip_worker.ops import dlq

        url = self.dlq_url(queue)
        if not url:
            return None
        messages, _ = dlq.peek_messages(self.client(), url, PEEK_MAX)
        for message in messages:
            if message["MessageId"] == message_id:
                return {**dlq.summary(message), "body": message.get("Body", ""),
                        "attributes": {k: v.get("StringValue")
                                       for k, v in message.get("MessageAttributes", {}).items()}}
        return None

    def act(self, queue, action: str, selection: dict[str, Any], limit: int
            ) -> dict[str, Any]:
        """Redrive or delete what ``selection`` picks (``ops.dlq.selector``; ``{}``: every
        message), at most ``limit`` (the ids selected, or the count the page showed, then
        never more than the DLQ holds now); the scan stops after as many messages as it
        holds now. Returns the counts for the result page, with the selected ids that
        were not found."""
        from vip_worker.ops import dlq, redrive
        from vip_worker.ops.journal import Journal
        from vip_worker.sqs.queues import counts, queue_name

        client, url = self.client(), self.dlq_url(queue)
        if not url:
            raise HTTPException(404, f"queue {queue.name} has no dead-letter queue")
        depth = counts(client, url)["depth"]
        if "ids" not in selection:  # "all": what the page showed, if the DLQ still holds it
            limit = min(limit, depth)
        picks, picked = selector(selection), []

        def select(message: dict) -> bool:
            chosen = picks(message)
            if chosen:
                picked.append(message["MessageId"])
            return chosen

        def missing() -> list[str]:
            return sorted(set(selection.get("ids", ())) - set(picked))

        if action == "delete":
            deleted, problems = dlq.discard(client, url, select, limit, scan_max=depth)
            refused = {p.partition(":")[0] for p in problems}
            return {"deleted": deleted, "errors": problems, "not_found": missing(),
                    "deleted_ids": [i for i in picked if i not in refused]}
        from vip_worker.store.factory import state_dir

        path = os.path.join(os.path.abspath(state_dir(self.settings)), "redrive",
                            f"{queue_name(url)}.journal")
        with Journal(path) as journal:  # JournalBusy: another redrive of this DLQ runs
            if journal.run is not None or journal.pending():
                raise HTTPException(409, f"an unfinished redrive of {queue_name(url)} is in "
                                         f"{path}: finish it first (vip-worker dlq redrive "
                                         f"{queue.name} continues it, with its selection)")
            journal.begin(limit, selection)
            routes = {q.name: q.url for q in self.settings.queues}

            def target_of(message: dict) -> str:
                source = message.get("MessageAttributes", {}).get(SOURCE_QUEUE, {})
                return routes.get(source.get("StringValue", ""), queue.url)

            result = redrive.RedriveResult()
            why = redrive.move_messages(client, url, target_of, journal, result, limit,
                                        select=select, scan_max=depth)
            if why != redrive.STOPPED and not result.failed and not journal.pending():
                journal.finish()
            return {"moved": result.moved, "failed": result.failed,
                    "came_back": result.came_back, "errors": result.errors,
                    "unfinished": not journal.finished, "journal": path,
                    "not_found": missing()}


def add_routes(app, dash) -> None:
    Viewer = Annotated[Session, Depends(dash.viewer)]
    dead = DeadLetters(dash.settings, dash.jobs.producer)

    def queue_of(name: str):
        for queue in dash.settings.queues:
            if queue.name == name:
                return queue
        raise HTTPException(404, f"no queue named {name!r} is configured")

    async def sqs_call(fn, *args):
        """``fn`` in the thread pool; SQS unreachable or refusing: 503 naming why."""
        from vip_worker.ops.dlq import describe_error
        from vip_worker.sqs.api import TRANSPORT_ERRORS

        try:
            return await dash.call(fn, *args)
        except (*TRANSPORT_ERRORS, ValueError, OSError) as exc:
            raise HTTPException(503, f"SQS or the redrive journal: {describe_error(exc)}",
                                headers={"Retry-After": "5"}) from None

    def checked(reason: str, type_: str) -> None:
        if len(reason) > FILTER_MAX or len(type_) > FILTER_MAX:
            raise HTTPException(422, f"a filter is longer than {FILTER_MAX} characters")

    @app.get("/dlq", name="dlq")
    async def dead_letters(request: Request, session: Viewer, queue: str = "",
                           reason: str = "", type: str = ""):  # noqa: A002 (the query's name)
        checked(reason, type)
        queues = [queue_of(queue)] if queue else list(dash.settings.queues)
        matches = matcher(reason, type)
        views = [await dash.call(dead.overview, q, matches) for q in queues]
        return dash.render(request, "dlq.html", session, active="dlq", views=views,
                           query={"queue": queue, "reason": reason, "type": type},
                           queues=[q.name for q in dash.settings.queues],
                           error_class=ERROR_CLASS, error_text=ERROR_TEXT)

    @app.get("/dlq/{queue}/messages/{message_id}", name="dlq_message")
    async def message(request: Request, session: Viewer, queue: str, message_id: str):
        if not MESSAGE_ID_RE.match(message_id):
            raise HTTPException(404, "no such message")
        found = await sqs_call(dead.message, queue_of(queue), message_id)
        if found is None:
            raise HTTPException(404, f"message {message_id} is not among the first "
                                     f"{PEEK_MAX} of the dead-letter queue of {queue}")
        try:
            body = json.dumps(json.loads(found["body"]), indent=2, sort_keys=True)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to show
            body = found["body"]
        return dash.render(request, "dlq_message.html", session, active="dlq", queue=queue,
                           message=found, body=body)

    @app.post("/dlq/{queue}/act", name="dlq_act")
    async def act(request: Request, queue: str):
        session, form = await dash.act(request)
        target = queue_of(queue)
        action, scope = field(form, "action"), field(form, "scope")
        if action not in ACTIONS or scope not in SCOPES:
            raise HTTPException(422, f"action: one of {ACTIONS}; scope: one of {SCOPES}")
        reason, type_ = field(form, "reason"), field(form, "type")
        checked(reason, type_)
        if scope == "selected":
            ids = set(form.get("message_id", []))
            if not ids or not all(MESSAGE_ID_RE.match(i) for i in ids):
                raise HTTPException(422, "message_id: select at least one message")
            selection: dict[str, Any] = {"ids": sorted(ids)}
            limit = len(ids)
        else:
            ids = set()
            selection = {k: v.strip() for k, v in (("reason", reason), ("type", type_))
                         if v.strip()}  # {}: every message
            # The count the page showed: messages dead-lettered after it are not touched.
            count = field(form, "count")
            if not count.isascii() or not count.isdigit() or int(count) > 10**9:
                raise HTTPException(422, "count: the number of messages the page showed")
            limit = int(count)
        from vip_worker.ops.journal import JournalBusy

        try:
            outcome = await sqs_call(dead.act, target, action, selection, limit)
        except JournalBusy as exc:
            raise HTTPException(409, f"another redrive of this DLQ is running: {exc}") from None
        done_ids = outcome.pop("deleted_ids", [])
        log_action(session, f"dlq.{action}", queue=queue, scope=scope,
                   message_ids=sorted(ids)[:LOG_IDS], reason_filter=reason or None,
                   type_filter=type_ or None,
                   outcome={k: v for k, v in outcome.items() if k != "errors"},
                   errors=len(outcome.get("errors", [])))
        for start in range(0, len(done_ids), LOG_IDS):  # the audit trail: every id deleted
            log_action(session, "dlq.deleted", queue=queue,
                       message_ids=done_ids[start:start + LOG_IDS])
        return dash.render(request, "dlq_result.html", session, active="dlq", queue=queue,
                           action=action, scope=scope, outcome=outcome, count=len(ids))
