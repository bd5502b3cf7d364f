"""``vip-worker dlq redrive``: the command around ``vip_worker.ops.redrive``'s manual move.

``cmd_dlq`` (``vip_worker.ops.commands``) finds the DLQ and calls ``cmd_redrive``.
What it prints on the way out of an interrupted run and at the start of the run
that continues it come from one function, ``progress``, read from the journal, so
the two always agree. Manual: docs/status-and-dlq.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from vip_worker import exitcodes
from vip_worker.outcomes import SOURCE_QUEUE
from vip_worker.store.factory import state_dir

MOVE_TASK_WARNING = (
    "warning: SQS's move task is not bounded by vip-worker: it moves the DLQ's messages at "
    "its own rate and may also move messages dead-lettered again while it runs (with "
    "daemons running and a handler that still fails, the same jobs can go round until the "
    "task ends); it cannot stop after N messages and keeps no journal. Without --move-task, "
    "the manual move moves only what the DLQ held when it began, each message once.")


def fail(text: str) -> None:
    print(f"vip-worker: {text}", file=sys.stderr)


class StopOnSignal:
    """While in use, SIGINT (Ctrl-C) or SIGTERM only records (``stop()`` turns true): the
    move finishes the batch in hand, so no send is left in doubt. A second signal raises
    ``KeyboardInterrupt`` at once (the journal still loses nothing). Outside the main
    thread, signals cannot be caught and nothing is installed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.saved[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


def target_url(client, name_or_url: str, settings) -> str:
    """``--to``: a URL as is, a configured queue's URL, else GetQueueUrl of the name."""
    if name_or_url.startswith(("http://", "https://")):
        return name_or_url
    for queue in settings.queues:
        if queue.name == name_or_url:
            return queue.url
    return client.queue_url(name_or_url)


def refusal(exc) -> str:
    """Why StartMessageMoveTask failed, short: an error page (moto's 500) as its status."""
    error = exc.response.get("Error", {})
    text = " ".join(str(error.get("Message", "")).split())
    if not text or text.startswith("<"):
        return f"HTTP {exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '?')}"
    return f"{error.get('Code', '?')}: {text[:160]}"


def cmd_redrive(args, settings, client, queue, dlq_url: str) -> int:
    from vip_worker.ops.dlq import describe_error
    from vip_worker.ops.journal import Journal, JournalBusy
    from vip_worker.sqs.api import TRANSPORT_ERRORS, error_code
    from vip_worker.sqs.queues import queue_name

    to_url = None
    if args.to:
        try:
            to_url = target_url(client, args.to, settings)
        except TRANSPORT_ERRORS as exc:
            missing = error_code(exc) in ("AWS.SimpleQueueService.NonExistentQueue",
                                          "QueueDoesNotExist")
            fail(f"--to {args.to}: {'no such queue: ' if missing else ''}{describe_error(exc)}")
            return exitcodes.USAGE if missing else exitcodes.UNAVAILABLE
    path = args.journal or os.path.join(os.path.abspath(state_dir(settings)), "redrive",
                                        f"{queue_name(dlq_url)}.journal")
    try:
        journal = Journal(path)
    except (JournalBusy, OSError) as exc:
        fail(f"cannot use the journal {path}: {exc} (pass --journal FILE)")
        return exitcodes.UNAVAILABLE
    with journal:
        if args.move_task and started_move_task(args, client, journal, dlq_url, to_url):
            return exitcodes.OK
        routes = {q.name: q.url for q in settings.queues}

        def target_of(message: dict) -> str:
            if to_url:
                return to_url
            source = message.get("MessageAttributes", {}).get(SOURCE_QUEUE, {})
            return routes.get(source.get("StringValue", ""), queue.url)

        return manual_move(args, client, journal, dlq_url, target_of)


def manual_move(args, client, journal, dlq_url: str, target_of) -> int:
    """Plan, move, report; the journal is finished only when nothing is left to do."""
    from vip_worker.ops import redrive
    from vip_worker.ops.dlq import describe_error, describe_selection, selector
    from vip_worker.sqs.api import TRANSPORT_ERRORS
    from vip_worker.sqs.queues import counts, queue_name

    continuing = journal.run is not None or bool(journal.pending())
    limit = redrive.plan(client, dlq_url, journal)
    # A dashboard redrive of some messages journals which: continuing it moves those only.
    selection = journal.run.get("selection")
    select, scan_max = selector(selection), None
    if continuing:
        print(f"continuing the redrive in {journal.path}: {progress(journal)}")
        if selection:
            print(f"it is a dashboard redrive of {describe_selection(selection)}: "
                  f"only those move")
            scan_max = counts(client, dlq_url)["depth"]
    else:
        print(f"redriving the {limit} message(s) {queue_name(dlq_url)} holds now, each once")
    if args.max is not None:
        limit = min(limit, args.max)
    result = redrive.RedriveResult()
    code, why = exitcodes.OK, redrive.STOPPED
    with StopOnSignal() as stop:
        try:
            why = redrive.move_messages(client, dlq_url, target_of, journal, result, limit,
                                        stop=stop, select=select, scan_max=scan_max)
        except KeyboardInterrupt:
            pass
        except TRANSPORT_ERRORS as exc:
            fail(f"DLQ {queue_name(dlq_url)}: {describe_error(exc)}")
            code = exitcodes.UNAVAILABLE
    done = why in (redrive.DONE_EMPTY, redrive.DONE_SCANNED) or (
        why == redrive.DONE_BUDGET and journal.count(redrive.DELETED) >= journal.run["budget"])
    if done and not result.failed and not journal.pending():
        journal.finish()
    report(result, journal, why)
    if journal.finished:  # nothing failed, nothing pending, no error
        return exitcodes.OK
    left = (f"{progress(journal)}; run the same command again to continue "
            f"(journal: {journal.path})")
    if why == redrive.STOPPED and code == exitcodes.OK:  # Ctrl-C or SIGTERM
        fail(f"interrupted: {left}")
        return exitcodes.INTERRUPTED
    print(left)
    return exitcodes.UNAVAILABLE if code == exitcodes.OK and result.failed else code


def progress(journal) -> str:
    """Where this redrive stands, from the journal alone: said when a run stops, and
    again when the next one continues it."""
    from vip_worker.ops.journal import DELETED, SENDING, SENT

    text = (f"{journal.count(DELETED)} of the {journal.run['budget']} message(s) the DLQ "
            f"held when this redrive began are moved")
    sent, doubt = journal.count(SENT), journal.count(SENDING)
    if sent:
        text += f"; {sent} sent, still to be deleted from the DLQ (never sent again)"
    if doubt:
        text += (f"; {doubt} stopped inside a send (sent again: may arrive twice, look "
                 "for vip_redriven_from)")
    return text


def started_move_task(args, client, journal, dlq_url: str, to_url: str | None) -> bool:
    """``--move-task``: StartMessageMoveTask, with a warning naming its limits, unless the
    manual move must run (an unfinished redrive, ``--max``, or SQS refuses the task)."""
    from vip_worker.sqs.api import ClientError
    from vip_worker.sqs.queues import queue_arn, queue_name

    if journal.run is not None or journal.pending():
        print(f"an unfinished redrive is in {journal.path}: continuing it with the manual move")
        return False
    if args.max is not None:
        print("--max: using the manual move (a move task cannot stop after N messages)")
        return False
    dlq_arn = queue_arn(client, dlq_url)
    destination = queue_arn(client, to_url) if to_url else None
    try:
        handle = client.start_message_move_task(dlq_arn, destination)
    except ClientError as exc:
        print(f"StartMessageMoveTask unavailable ({refusal(exc)}): using the manual move")
        return False
    print(MOVE_TASK_WARNING, file=sys.stderr)
    target = queue_name(to_url) if to_url else "each message's source queue"
    print(f"started an SQS message move task from {queue_name(dlq_url)} to {target}\n"
          f"task handle: {handle}\n(follow it with ListMessageMoveTasks --source-arn {dlq_arn})")
    return True


def report(result, journal, why: str) -> None:
    from vip_worker.ops import redrive

    for error in result.errors:
        fail(error)
    print(f"moved {result.moved}, skipped {result.skipped} (already sent), "
          f"failed {result.failed}")
    if result.came_back:
        print(f"{result.came_back} moved message(s) failed again and are back in the DLQ: "
              "left there (a redrive moves each message once)")
    if result.resent:
        print(f"{result.resent} message(s) whose send an earlier run left in doubt were sent "
              "again (they may arrive twice; look for vip_redriven_from)")
    if journal.finished and why == redrive.DONE_BUDGET and journal.run["budget"]:
        print(f"done: the {journal.run['budget']} message(s) the DLQ held when this redrive "
              "began are handled; later dead letters are left for the next redrive")
    if journal.pending():
        print(f"{len(journal.pending())} message(s) sent but not yet deleted from the DLQ: "
              f"the next run deletes them (a killed run's messages reappear after "
              f"{redrive.MOVE_VISIBILITY_S} s)")
