"""Secrets never reach a log line: configured secret values and URL passwords are masked."""

from __future__ import annotations

import io
import logging

from vip_worker import config, logconfig


def capture(secrets):
    logconfig.configure("DEBUG", secrets=secrets)
    handler = logging.getLogger("vip_worker").handlers[0]
    stream = io.StringIO()
    handler.setStream(stream)
    return stream


def test_secret_values_and_url_passwords_are_masked_everywhere():
    settings = config.load(environ={
        "ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/articles",
        "MONGODB_URI": "mongodb://app:Mongo-Pass-1@db.internal:27017/jobs",
        "FASTAPI_URL": "https://svc:Api-Pass-2@gen.internal/"})
    secrets = config.secrets(settings, environ={"AWS_SECRET_ACCESS_KEY": "Aws-Secret-3"})
    stream = capture(secrets)
    log = logging.getLogger("vip_worker.test")
    log.info("event", extra={"uri": settings.mongodb_uri, "note": "key Aws-Secret-3"})
    try:
        raise RuntimeError(f"cannot reach {settings.fastapi_url}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("vip_worker_plugins.x").warning("plugin says Mongo-Pass-1")
    text = stream.getvalue()
    for secret in ("Mongo-Pass-1", "Api-Pass-2", "Aws-Secret-3"):
        assert secret not in text
    assert "\"uri\": \"****\"" in text and "https://svc:****@gen.internal" in text
    assert text.count("\n") == 3


def test_lines_without_secrets_are_unchanged():
    stream = capture(["topsecret"])
    logging.getLogger("vip_worker.test").info("message.succeeded",
                                             extra={"queue": "q", "url": "http://host/x"})
    assert '"url": "http://host/x"' in stream.getvalue()


def test_a_succeeded_batch_line_reads_back_as_one_record_per_message():
    from vip_worker.logconfig import message_records

    line = {"level": "INFO", "event": "messages.succeeded", "queue": "articles", "count": 2,
            "messages": [{"message_id": "m1", "job_id": "j1", "type": "articles",
                          "receive_count": 1, "duration_s": 0.5},
                         {"message_id": "m2", "job_id": "j2", "type": "articles",
                          "receive_count": 3, "duration_s": 1.5}],
            "pid": 7, "poller": 0, "time": "2026-01-15T10:30:04+00:00"}
    records = message_records(line)
    assert [(r["event"], r["message_id"], r["job_id"], r["queue"], r["receive_count"], r["pid"])
            for r in records] == [("message.succeeded", "m1", "j1", "articles", 1, 7),
                                  ("message.succeeded", "m2", "j2", "articles", 3, 7)]
    assert "messages" not in records[0] and "count" not in records[0]
    other = {"event": "message.retried", "job_id": "j3"}
    assert message_records(other) == [other]
