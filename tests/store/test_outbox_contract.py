"""The callback outbox's contract (``vip_worker.store.outbox``), on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vip_worker.store.outbox import TERMINAL

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
URL = "https://app.example.com/hooks/vip"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ended(store, job_id="job-1", status="completed"):
    store.create_job(job_id, "u1", "articles", {"topic": "t"}, T0)
    store.claim(job_id, user_id="u1", type="articles", params={"topic": "t"},
                message_id="m1", lease_s=60, now=T0, delivery="d1")
    if status == "completed":
        assert store.complete(job_id, at(1), delivery="d1")
    else:
        store.fail(job_id, "boom", at(1), delivery="d1")


def test_terminal_statuses_include_cancelled():
    assert set(TERMINAL) == {"completed", "failed", "cancelled"}


def test_add_callback_records_one_entry_per_terminal_status(store):
    ended(store)
    entry = store.add_callback("job-1", URL, at(2))
    assert entry["id"] == "job-1:completed" and entry["state"] == "pending"
    assert store.add_callback("job-1", URL, at(3)) is None  # recorded already
    job = store.get_job("job-1")
    assert job["callback"]["id"] == "job-1:completed"
    assert job["callback"]["nextAt"] == at(2) and job["callback"]["attempts"] == 0
    assert job["callback"]["url"] == URL and job["callback"]["createdAt"] == at(2)


def test_add_callback_refuses_a_job_that_has_not_ended(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    assert store.add_callback("job-1", URL, T0) is None
    assert store.add_callback("missing", URL, T0) is None
    assert store.get_job("job-1").get("callback") is None


def test_a_failed_job_gets_its_own_delivery_id(store):
    ended(store, status="failed")
    assert store.add_callback("job-1", URL, at(2))["id"] == "job-1:failed"


def test_due_callbacks_lists_pending_entries_due_by_now_earliest_first(store):
    for n, job_id in enumerate(["a", "b", "c"]):
        ended(store, job_id)
        store.add_callback(job_id, URL, at(2), first_at=at(10 - n))
    assert [j["_id"] for j in store.due_callbacks(at(9), 10)] == ["c", "b"]
    assert [j["_id"] for j in store.due_callbacks(at(20), 2)] == ["c", "b"]
    assert store.due_callbacks(at(7), 10) == []


def test_hold_callback_is_a_compare_and_set_on_next_at(store):
    ended(store)
    store.add_callback("job-1", URL, at(2))
    assert store.hold_callback("job-1", at(2), at(30)) is True
    assert store.hold_callback("job-1", at(2), at(40)) is False  # another sender won
    assert store.due_callbacks(at(29), 10) == []
    assert [j["_id"] for j in store.due_callbacks(at(30), 10)] == ["job-1"]


def test_a_failed_attempt_is_due_again_and_a_success_is_delivered(store):
    ended(store)
    store.add_callback("job-1", URL, at(2))
    assert store.callback_attempted("job-1", "job-1:completed", False, at(5), "HTTP 500", at(3))
    entry = store.get_job("job-1")["callback"]
    assert entry["attempts"] == 1 and entry["nextAt"] == at(5)
    assert entry["lastError"] == "HTTP 500" and entry["state"] == "pending"
    assert store.callback_attempted("job-1", "job-1:completed", True, None, None, at(6))
    entry = store.get_job("job-1")["callback"]
    assert entry["state"] == "delivered" and entry["attempts"] == 2
    assert entry["deliveredAt"] == at(6) and entry["nextAt"] is None
    assert store.due_callbacks(at(100), 10) == []
    # Settled: a late attempt of the same entry changes nothing.
    assert not store.callback_attempted("job-1", "job-1:completed", False, at(9), "x", at(7))


def test_giving_up_takes_the_entry_out_of_the_sweep(store):
    ended(store)
    store.add_callback("job-1", URL, at(2))
    assert store.callback_attempted("job-1", "job-1:completed", False, None, "refused", at(3))
    entry = store.get_job("job-1")["callback"]
    assert entry["state"] == "gave_up" and entry["nextAt"] is None
    assert store.due_callbacks(at(100), 10) == []


def test_callback_attempted_names_the_entry(store):
    ended(store)
    store.add_callback("job-1", URL, at(2))
    assert store.callback_attempted("job-1", "job-1:failed", True, None, None, at(3)) is False
    assert store.get_job("job-1")["callback"]["state"] == "pending"
