"""Checkpoints, usage and the daily spend in the job store, on every backend:
``checkpoint`` (only the holder of a processing job writes; bad names and sizes refused,
naming the checkpoint), checkpoints loaded by the next claim, ``save_result`` copying the
content's ``usage`` onto the job, and ``add_spend`` / ``spent`` per user and UTC day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from vip_worker.store import ClaimOutcome
from vip_worker.store.checkpoints import MAX_CHECKPOINT_BYTES, CheckpointError

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
CONTENT = "generated_content"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claim(store, delivery="d1", now=T0, lease_s=60, message_id="m1"):
    return store.claim("job-1", user_id="u1", type="articles", params={}, message_id=message_id,
                       lease_s=lease_s, now=now, delivery=delivery)


def test_a_checkpoint_is_kept_and_the_next_claim_loads_it(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    value = {"title": "T", "content": "words " * 10, "n": [1, 2.5, None, True]}
    assert store.checkpoint("job-1", "generated", value, at(1), delivery="d1") is True
    assert store.checkpoint("job-1", "outline", ["a", "b"], at(2), delivery="d1") is True
    assert store.get_job("job-1")["checkpoints"] == {"generated": value, "outline": ["a", "b"]}
    # The holder dies; the next delivery's claim (after the lease) hands them back.
    again = claim(store, delivery="d2", now=at(120), message_id="m2")
    assert again.outcome is ClaimOutcome.CLAIMED
    assert again.job["checkpoints"] == {"generated": value, "outline": ["a", "b"]}


def test_a_checkpoint_is_replaced_by_the_same_name(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    store.checkpoint("job-1", "step", 1, at(1), delivery="d1")
    store.checkpoint("job-1", "step", 2, at(2), delivery="d1")
    assert store.get_job("job-1")["checkpoints"] == {"step": 2}


def test_only_the_holder_of_a_processing_job_writes_a_checkpoint(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    assert store.checkpoint("job-1", "step", 1, at(1)) is False  # queued: nobody runs it
    assert store.checkpoint("missing", "step", 1, at(1)) is False
    claim(store)
    assert store.checkpoint("job-1", "step", 1, at(1), delivery="other") is False
    assert "checkpoints" not in store.get_job("job-1") or not store.get_job("job-1")[
        "checkpoints"]
    store.complete("job-1", at(2), delivery="d1")
    assert store.checkpoint("job-1", "step", 1, at(3), delivery="d1") is False


@pytest.mark.parametrize("name", ["", "a.b", "$set", "x" * 65, "sp ace", 7])
def test_a_bad_name_is_refused_naming_it(store, name):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    with pytest.raises(CheckpointError, match="checkpoint name"):
        store.checkpoint("job-1", name, 1, at(1), delivery="d1")


def test_a_value_too_large_or_not_json_is_refused_naming_the_checkpoint(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    with pytest.raises(CheckpointError, match=r"checkpoint 'big' is \d+ bytes \(limit"):
        store.checkpoint("job-1", "big", "x" * MAX_CHECKPOINT_BYTES, at(1), delivery="d1")
    with pytest.raises(CheckpointError, match="checkpoint 'nan' is not JSON"):
        store.checkpoint("job-1", "nan", float("nan"), at(1), delivery="d1")
    with pytest.raises(CheckpointError, match="checkpoint 'when' is not JSON"):
        store.checkpoint("job-1", "when", T0, at(1), delivery="d1")
    assert not store.get_job("job-1").get("checkpoints")


def test_save_result_puts_the_usage_on_the_job_and_the_content(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    usage = {"tokensIn": 12, "tokensOut": 1300, "images": 0, "model": "m-1", "cost": 0.0271}
    store.save_result("job-1", CONTENT, {"title": "T", "usage": usage}, at(1))
    job = store.get_job("job-1")
    assert (job["status"], job["usage"]) == ("completed", usage)
    assert store.get_content(CONTENT, "job-1")[0]["usage"] == usage


def test_save_result_without_usage_leaves_the_job_without_it(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    claim(store)
    store.save_result("job-1", CONTENT, {"title": "T"}, at(1))
    assert store.get_job("job-1").get("usage") is None


def test_spend_adds_up_per_user_and_day(store):
    day, other = date(2025, 1, 15), date(2025, 1, 16)
    assert store.spent("u1", day) == 0.0
    assert store.add_spend("u1", day, 0.25, T0) == pytest.approx(0.25)
    assert store.add_spend("u1", day, 0.5, at(1)) == pytest.approx(0.75)
    store.add_spend("u2", day, 2.0, at(2))
    store.add_spend("u1", other, 1.0, at(3))
    assert store.spent("u1", day) == pytest.approx(0.75)
    assert store.spent("u2", day) == pytest.approx(2.0)
    assert store.spent("u1", other) == pytest.approx(1.0)
    assert store.spent("u3", day) == 0.0


def test_spend_is_shared_by_stores_on_the_same_data(backend):
    first, second = backend.new_store(), backend.new_store()
    day = date(2025, 1, 15)
    first.add_spend("u1", day, 1.0, T0)
    second.add_spend("u1", day, 2.0, T0)
    assert first.spent("u1", day) == pytest.approx(3.0)


def test_progress_many_writes_the_held_jobs_in_one_call(store):
    for job_id in ("job-1", "job-2", "job-3"):
        store.create_job(job_id, "u1", "articles", {}, T0)
        store.claim(job_id, user_id="u1", type="articles", params={}, message_id=job_id,
                    lease_s=60, now=T0, delivery=f"d-{job_id}")
    store.complete("job-3", at(1), delivery="d-job-3")
    written = store.progress_many([
        ("job-1", "d-job-1", 40, "Writing... 400 of 1000 words", False),
        ("job-2", "d-job-2", 25, "Generating content (estimated)...", True),
        ("job-3", "d-job-3", 50, "late", False),  # completed: untouched
        ("job-2", "stale", 99, "not the holder", False),  # another delivery: untouched
        ("missing", None, 10, "no such job", False),
    ], at(2))
    assert written == 2
    one, two, three = (store.get_job(j) for j in ("job-1", "job-2", "job-3"))
    assert (one["progress"], one["message"], one["progressEstimated"]) == (
        40, "Writing... 400 of 1000 words", False)
    assert (two["progress"], two["progressEstimated"], two["updatedAt"]) == (25, True, at(2))
    assert (three["status"], three["progress"]) == ("completed", 100)
    assert store.progress_many([], at(3)) == 0
