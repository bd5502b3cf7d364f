"""One JSON object per line (python-json-logger), to stdout or a file.

Events are stable names in the ``message`` field's place (``event``), data in
fields: ``log.info("message.retried", extra={...})``. Every line carries the
time, level, pid and, in a poller, its index.

Succeeded messages are logged one line per delete batch (``messages.succeeded``,
with a ``messages`` list), not one per message; ``message_records`` turns such a
line back into one ``message.succeeded`` record per message for tools that read
the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

ROOT = "vip_worker"


class ProcessFields(logging.Filter):
    """Adds ``pid`` and ``poller`` (None in the master) to each record."""

    def __init__(self) -> None:
        super().__init__()
        self.poller: int | None = None
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = self.pid
        record.poller = self.poller
        return True


class MaskingJsonFormatter(JsonFormatter):
    """JSON lines with secrets masked: known secret values, and any URL's password.

    The check is a few substring searches on the finished line, so it covers every
    field, exception texts and plugins' own lines at a cost of about a microsecond.
    """

    def __init__(self, *args, secrets: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets or () if len(s) >= 4}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "****")
        if "@" in text and "://" in text:
            text = URL_PASSWORD.sub(r"\1****@", text)
        return text


# scheme://user:password@ -> scheme://user:****@ (also inside JSON-escaped text)
URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"]*:)[^@/\s\"]+@")


def configure(level: str = "INFO", log_file: str = "",
              secrets: list[str] | None = None) -> ProcessFields:
    """Install the JSON handler on the ``vip_worker`` logger; return its field filter.

    :param secrets: values never to write (``config.secrets(settings)``).
    """
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stdout)
    formatter = MaskingJsonFormatter(
        "%(levelname)s %(message)s",
        secrets=secrets,
        # "_aws" (CloudWatch EMF) is passed as aws_emf: the formatter drops "_" fields.
        rename_fields={"levelname": "level", "message": "event", "aws_emf": "_aws"},
        reserved_attrs=RESERVED,
        timestamp="time",  # ISO 8601, UTC
        json_ensure_ascii=False,
    )
    handler.setFormatter(formatter)
    # No line carries thread or process names: skip collecting them for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    fields = ProcessFields()
    handler.addFilter(fields)
    logger = logging.getLogger(ROOT)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # Plugins log under their own names: route them through the same handler.
    plugins = logging.getLogger("vip_worker_plugins")
    plugins.handlers = [handler]
    plugins.setLevel(level)
    plugins.propagate = False
    return fields


SUCCEEDED_BATCH = "messages.succeeded"
SUCCEEDED = "message.succeeded"


def message_records(record: dict) -> list[dict]:
    """The per-message records one parsed log line stands for.

    A ``messages.succeeded`` line gives one ``message.succeeded`` record per entry
    of its ``messages`` (each with the line's ``queue``, ``level``, ``pid``,
    ``poller`` and ``time``); any other line is returned as it is.
    """
    if record.get("event") != SUCCEEDED_BATCH:
        return [record]
    shared = {k: v for k, v in record.items() if k not in ("messages", "count")}
    return [{**shared, **entry, "event": SUCCEEDED} for entry in record.get("messages", [])]


def after_fork(fields: ProcessFields, poller: int) -> None:
    fields.pid = os.getpid()
    fields.poller = poller


# The LogRecord attributes that are not fields of the line.
RESERVED = [
    "args", "created", "exc_info", "exc_text", "filename", "funcName", "levelno", "lineno",
    "module", "msecs", "msg", "name", "pathname", "process", "processName",
    "relativeCreated", "stack_info", "thread", "threadName", "taskName",
]


# -- the commands' stderr: a person reads it -------------------------------------------------

# Attributes every LogRecord has: what is left on a record are the event's fields.
STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class ConsoleFormatter(logging.Formatter):
    """``vip-worker: warning: producer.inline: <detail> (job_id=... type=...)``: the event,
    its ``detail`` and its other fields on one line (a bare event name says nothing)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items()
                  if k not in STANDARD_ATTRS and not k.startswith("_")}
        detail = fields.pop("detail", None)
        text = f"vip-worker: {record.levelname.lower()}: {record.getMessage()}"
        if detail:
            text += f": {detail}"
        if fields:
            text += " (" + " ".join(f"{k}={v}" for k, v in fields.items()) + ")"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return URL_PASSWORD.sub(r"\1****@", text) if "://" in text else text


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def console(level: int = logging.WARNING) -> Iterator[None]:
    """For a command other than ``run``: records of ``level`` and above from vip_worker and
    the plugins go to stderr as ``ConsoleFormatter`` lines, until the block ends."""
    handler = StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(ConsoleFormatter())
    loggers = [logging.getLogger(ROOT), logging.getLogger("vip_worker_plugins")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
