"""Progress never moves back through ``progress_many`` (the ledger's batched streamed
progress), on every backend; ``progress`` (the handler's own step) still sets what it is
told, and a new step's history entry is only written by the write that lands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held(store, job_id="job-1", delivery="d1"):
    store.create_job(job_id, "u1", "articles", {}, T0)
    store.claim(job_id, user_id="u1", type="articles", params={}, message_id=job_id,
                lease_s=60, now=T0, delivery=delivery)


def test_a_late_batched_value_never_moves_progress_back(store):
    held(store)
    store.progress("job-1", 80, "Saving content...", at(1), delivery="d1")
    written = store.progress_many(
        [("job-1", "d1", 60, "Writing... 600 of 1000 words", False)], at(2))
    job = store.get_job("job-1")
    assert written == 0
    assert (job["progress"], job["message"]) == (80, "Saving content...")
    assert [e.get("message") for e in job["history"] if e["event"] == "progress"] == [
        "Saving content..."]


def test_batched_progress_rises_and_an_equal_value_is_written(store):
    held(store)
    assert store.progress_many([("job-1", "d1", 30, "Writing... 300 of 1000 words",
                                 False)], at(1)) == 1
    assert store.progress_many([("job-1", "d1", 30, "Writing... 310 of 1000 words",
                                 False)], at(2)) == 1
    assert store.progress_many([("job-1", "d1", 45, "Writing... 450 of 1000 words",
                                 False)], at(3)) == 1
    assert store.get_job("job-1")["progress"] == 45


def test_the_handlers_own_progress_write_may_go_down(store):
    held(store)  # a new attempt starts again at 10, below the last one's progress
    store.progress_many([("job-1", "d1", 70, "Writing... 700 of 1000 words", False)], at(1))
    store.progress("job-1", 10, "Generating content...", at(2), delivery="d1")
    assert store.get_job("job-1")["progress"] == 10


def test_the_handlers_own_step_and_a_new_claim_end_an_estimate(store):
    held(store)
    store.progress_many([("job-1", "d1", 40, "Generating content (estimated)...", True)],
                        at(1))
    assert store.get_job("job-1")["progressEstimated"] is True
    store.progress("job-1", 80, "Saving content...", at(2), delivery="d1")
    assert store.get_job("job-1")["progressEstimated"] is False
    store.progress_many([("job-1", "d1", 85, "Generating content (estimated)...", True)],
                        at(3))
    store.release("job-1", "d1", at(4), "handed back")  # the next attempt's claim
    store.claim("job-1", user_id="u1", type="articles", params={}, message_id="m2",
                lease_s=60, now=at(5), delivery="d2")
    job = store.get_job("job-1")
    assert (job["progress"], job["progressEstimated"]) == (0, False)
