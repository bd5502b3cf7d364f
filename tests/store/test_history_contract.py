"""A job's timeline (``store/history.py``) on every backend: one entry per ledger
transition, written in the transition's own write, progress only when its message
changes, capped at the last 200."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.store_writes import counted_writes
from vip_worker.store.history import HISTORY_MAX

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
BY = "host-a 101/poller 0"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claim(store, job_id="job-1", delivery="d1", now=T0, **extra):
    return store.claim(job_id, user_id="u1", type="articles", params={}, message_id="m1",
                       lease_s=60, now=now, delivery=delivery, **extra)


def steps(store, job_id="job-1"):
    return [(h["event"], h["attempt"], h["by"], h["reason"])
            for h in store.get_job(job_id)["history"]]


def test_created_claimed_progress_steps_completed(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, by=BY)
    claim(store, by=BY, now=at(1))  # the same delivery again: its lease renewed, no step
    for percent, message in ((10, "Outline"), (20, "Outline"), (50, "Writing"),
                             (60, "Writing")):
        store.progress("job-1", percent, message, at(2), delivery="d1")
    assert store.complete("job-1", at(3), delivery="d1")
    history = store.get_job("job-1")["history"]
    assert [(h["event"], h.get("progress"), h.get("message")) for h in history] == [
        ("created", None, None), ("claimed", None, None), ("progress", 10, "Outline"),
        ("progress", 50, "Writing"), ("completed", None, None)]
    assert steps(store)[1] == ("claimed", 1, BY, None)
    assert [h["at"] for h in history] == [T0, T0, at(2), at(2), at(3)]


def test_a_step_is_written_in_the_transitions_own_write(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    with counted_writes(store) as writes:
        claim(store, by=BY)
        store.progress("job-1", 5, "Processing", at(1), delivery="d1")  # unchanged text
        store.requeue("job-1", "timeout", at(2), delivery="d1", delay_s=30)
    assert writes.count == 3, writes.calls
    assert [s[0] for s in steps(store)] == ["created", "claimed", "requeued"]


def test_retries_failures_and_a_redrive_with_their_reasons(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, by=BY)
    store.requeue("job-1", "rate limited", at(1), delivery="d1")
    claim(store, delivery="d2", now=at(2), by="host-b 7/poller 1")
    store.fail("job-1", "bad topic", at(3), delivery="d2")
    claim(store, delivery="d3", now=at(4), by=BY, redriven=True)
    assert steps(store) == [
        ("created", None, None, None), ("claimed", 1, BY, None),
        ("requeued", None, None, "rate limited"), ("claimed", 2, "host-b 7/poller 1", None),
        ("failed", None, None, "bad topic"), ("claimed", 1, BY, "redriven")]


def test_a_claim_that_creates_the_job_records_both(store):
    claim(store, by=BY)
    assert [s[0] for s in steps(store)] == ["created", "claimed"]


def test_released_and_deferred(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    assert store.release("job-1", "d1", at(1), "shutting down")
    claim(store, delivery="d2", now=at(2))
    assert store.release("job-1", "d2", at(3), "quota openai", event="deferred")
    assert steps(store)[-3:] == [("released", None, None, "shutting down"),
                                 ("claimed", 1, None, None),
                                 ("deferred", None, None, "quota openai")]


def test_cancellation_steps(store):
    store.create_job("q", "u1", "articles", {}, T0)
    store.request_cancel("q", at(1))
    assert [s[0] for s in steps(store, "q")] == ["created", "cancelled"]
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    store.request_cancel("job-1", at(1))
    store.request_cancel("job-1", at(2))  # asked already: no second step
    assert store.cancel_held("job-1", at(3), delivery="d1")
    assert [s[0] for s in steps(store)] == ["created", "claimed", "cancel_requested",
                                            "cancelled"]


def test_a_rescue_and_an_exhausted_claim(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, by=BY)
    [orphan] = store.expired_leases(at(61), 10)
    assert store.rescue(orphan, at(61), resend=True, reason="lease expired", max_attempts=5)
    assert steps(store)[-1] == ("rescued", 1, "lifeline", "lease expired")
    claim(store, delivery="d2", now=at(62))
    [orphan] = store.expired_leases(at(200), 10)
    assert store.rescue(orphan, at(200), resend=True, reason="lease expired", max_attempts=2)
    assert steps(store)[-1][:3] == ("failed", 2, "lifeline")
    store.create_job("job-2", "u1", "articles", {}, T0)
    claim(store, job_id="job-2")
    claim(store, job_id="job-2", delivery="d9", now=at(100), max_attempts=1)  # exhausted
    assert steps(store, "job-2")[-1][0] == "failed"


def test_save_result_completes_once(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    store.save_result("job-1", "generated_content", {"title": "t"}, at(1))
    store.save_result("job-1", "generated_content", {"title": "t"}, at(2))  # redelivered
    assert [s[0] for s in steps(store)] == ["created", "claimed", "completed"]


def test_callbacks_delivered_or_given_up(store):
    for job_id in ("ok", "bad"):
        store.create_job(job_id, "u1", "articles", {}, T0)
        store.fail(job_id, "boom", at(1))
        entry = store.add_callback(job_id, "http://127.0.0.1:9/cb", at(1))
        store.callback_attempted(job_id, entry["id"], False, at(5), "503", at(2))  # again
        store.callback_attempted(job_id, entry["id"], job_id == "ok", None,
                                 None if job_id == "ok" else "refused", at(6))
    assert steps(store, "ok")[-1] == ("callback", None, None, "delivered")
    assert steps(store, "bad")[-1] == ("callback", None, None, "gave up: refused")
    assert [s[0] for s in steps(store, "ok")] == ["created", "failed", "callback"]


def test_history_keeps_the_last_200_entries(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    def name(i):  # distinct steps: numbers in a message are masked (history.step_of)
        return "step " + "".join("abcdefghij"[int(d)] for d in str(i))

    for i in range(HISTORY_MAX + 10):
        store.progress("job-1", i % 100, name(i), at(i), delivery="d1")
    history = store.get_job("job-1")["history"]
    assert len(history) == HISTORY_MAX
    assert history[-1]["message"] == name(HISTORY_MAX + 9)
    assert history[0]["message"] == name(10)  # created, claimed and steps 0..9 dropped


def test_progress_within_one_step_is_one_timeline_entry(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    for words in (40, 80, 120):
        store.progress("job-1", 10 + words // 10, f"Writing... {words} of 800 words", at(words),
                       delivery="d1")
    store.progress_many([("job-1", "d1", 30, "Writing... 160 of 800 words", False),
                         ("job-1", "d1", 31, "Writing... 200 of 800 words", False)], at(200))
    store.progress("job-1", 80, "Saving content...", at(300), delivery="d1")
    job = store.get_job("job-1")
    assert [(s["event"], s.get("message")) for s in job["history"]][-2:] == [
        ("progress", "Writing... 40 of 800 words"), ("progress", "Saving content...")]
    assert job["message"] == "Saving content..." and job["progress"] == 80
