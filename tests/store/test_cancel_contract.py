"""Cancellation in the job store, on every backend: ``request_cancel`` (a queued job ends
at once, a processing one is marked), the claim of a cancelled job (``CANCELLED``), the
lease renewal that tells the holder, and ``cancel_held`` (the holder stops)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vip_worker.store import STATUSES, CancelOutcome, ClaimOutcome

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claim(store, delivery="d1", now=T0, lease_s=60, message_id="m1"):
    return store.claim("job-1", user_id="u1", type="articles", params={}, message_id=message_id,
                       lease_s=lease_s, now=now, delivery=delivery)


def test_cancelled_is_a_status():
    assert "cancelled" in STATUSES


def test_a_queued_job_is_cancelled_at_once(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    result = store.request_cancel("job-1", at(1))
    assert result.outcome is CancelOutcome.CANCELLED
    job = store.get_job("job-1")
    assert (job["status"], job["cancelRequestedAt"], job["cancelledAt"]) == (
        "cancelled", at(1), at(1))
    assert result.job["status"] == "cancelled"
    assert [j["_id"] for j in store.list_jobs(status="cancelled")] == ["job-1"]


def test_a_processing_job_is_marked_and_stays_with_its_holder(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    result = store.request_cancel("job-1", at(1))
    assert result.outcome is CancelOutcome.REQUESTED
    job = store.get_job("job-1")
    assert (job["status"], job["cancelRequestedAt"], job["delivery"]) == (
        "processing", at(1), "d1")
    again = store.request_cancel("job-1", at(2))  # idempotent: the first request's time
    assert again.outcome is CancelOutcome.REQUESTED
    assert store.get_job("job-1")["cancelRequestedAt"] == at(1)


def test_finished_jobs_are_refused_and_left_alone(store):
    for job_id, end in (("done", "complete"), ("bad", "fail"), ("gone", "cancel")):
        store.create_job(job_id, "u1", "articles", {}, T0)
        if end == "complete":
            store.claim(job_id, user_id="u1", type="articles", params={}, message_id="m",
                        lease_s=60, now=T0, delivery="d")
            store.complete(job_id, at(1), delivery="d")
        elif end == "fail":
            store.fail(job_id, "broken", at(1))
        else:
            store.request_cancel(job_id, at(1))
        before = store.get_job(job_id)
        result = store.request_cancel(job_id, at(5))
        assert result.outcome is CancelOutcome.REFUSED, job_id
        assert result.job["status"] == before["status"]
        assert store.get_job(job_id) == before


def test_a_missing_job_or_another_users_is_not_found(store):
    assert store.request_cancel("nope", T0).outcome is CancelOutcome.NOT_FOUND
    store.create_job("job-1", "u1", "articles", {}, T0)
    assert store.request_cancel("job-1", T0, user_id="u2").outcome is CancelOutcome.NOT_FOUND
    assert store.get_job("job-1")["status"] == "queued"
    assert store.request_cancel("job-1", T0, user_id="u1").outcome is CancelOutcome.CANCELLED


def test_a_claim_of_a_cancelled_job_answers_cancelled_and_changes_nothing(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    store.request_cancel("job-1", at(1))
    before = store.get_job("job-1")
    result = claim(store, now=at(2))
    assert result.outcome is ClaimOutcome.CANCELLED
    assert store.get_job("job-1") == before


def test_a_requested_job_nobody_holds_any_more_is_cancelled_by_the_next_claim(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, delivery="d1", lease_s=10)
    store.request_cancel("job-1", at(1))
    result = claim(store, delivery="d2", now=at(30))  # d1's lease ran out: its poller died
    assert result.outcome is ClaimOutcome.CANCELLED
    job = store.get_job("job-1")
    assert (job["status"], job["cancelledAt"], job["leaseUntil"]) == ("cancelled", at(30), None)


def test_a_requested_job_handed_back_is_cancelled_by_the_next_claim(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, delivery="d1")
    store.request_cancel("job-1", at(1))
    store.requeue("job-1", "transient", at(2), delivery="d1")
    assert claim(store, delivery="d2", now=at(3)).outcome is ClaimOutcome.CANCELLED
    assert store.get_job("job-1")["status"] == "cancelled"


def test_renew_leases_tells_which_held_jobs_have_a_cancel_request(store):
    for job_id in ("job-1", "job-2"):
        store.create_job(job_id, "u1", "articles", {}, T0)
        store.claim(job_id, user_id="u1", type="articles", params={}, message_id=job_id,
                    lease_s=60, now=T0, delivery=f"d-{job_id}")
    store.request_cancel("job-2", at(1))
    still = store.renew_leases([("job-1", "d-job-1"), ("job-2", "d-job-2")], at(120), at(2))
    assert still == {"job-1", "job-2"}  # still held: the holder ends it
    assert set(still.cancel_requested) == {"job-2"}
    assert store.get_job("job-2")["leaseUntil"] == at(120)
    assert set(store.renew_leases([("job-1", "d-job-1")], at(130), at(3)).cancel_requested) == set()


def test_cancel_held_ends_the_holders_job_cancelled(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, delivery="d1")
    store.request_cancel("job-1", at(1))
    assert store.cancel_held("job-1", at(2), delivery="other") is False
    assert store.get_job("job-1")["status"] == "processing"
    assert store.cancel_held("job-1", at(3), delivery="d1") is True
    job = store.get_job("job-1")
    assert (job["status"], job["cancelledAt"], job["leaseUntil"], job["message"]) == (
        "cancelled", at(3), None, "Cancelled")
    assert store.renew_leases([("job-1", "d1")], at(100), at(4)) == set()
    assert store.cancel_held("job-1", at(5), delivery="d1") is False


def test_a_result_saved_after_the_cancellation_leaves_the_job_cancelled(store):
    """An abandoned handler's thread that saves later: the job stays cancelled, no content."""
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store, delivery="d1")
    store.request_cancel("job-1", at(1))
    store.cancel_held("job-1", at(2), delivery="d1")
    store.save_result("job-1", "generated_content", {"title": "late"}, at(3))
    assert store.get_job("job-1")["status"] == "cancelled"
    assert store.get_content("generated_content", "job-1") == []
