"""The dashboard's dead-letter page through real HTTP against moto: reasons, filters, a
message's body, redrive and delete of the selected or all matching messages."""

from __future__ import annotations

import glob
import os
import re
import uuid

import pytest

from tests.support.dashboard import signed_in
from tests.support.ops_cli import dead_letter, receive_all
from tests.support.sqs import queue_counts
from vip_worker.store.factory import state_dir
from vip_worker.web.keys import create_key

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("web_store", ["sqlite"],
                                                               indirect=True)]
ROW = re.compile(r'name="message_id" value="([^"]+)"')


@pytest.fixture
def dlq_api(web_api, make_queue, sqs):
    """The API with an ``articles`` queue that has a DLQ holding three dead letters."""
    urls = make_queue("articles")
    api = web_api(queues=False, environ={"ARTICLES_QUEUE_URL": urls["url"]})
    jobs = {}
    for reason in ("timeout after 900 s", "bad request: no topic", "timeout after 900 s"):
        job_id = uuid.uuid4().hex[:24]
        jobs[dead_letter(sqs, urls["dlq"], job_id, error=reason)] = (job_id, reason)
    return api, urls, jobs


def post(client, form: dict) -> object:
    page = client.get("/dashboard/dlq", params={"queue": "articles"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/dashboard/dlq/articles/act", data={"csrf": csrf, **form})


def test_the_page_shows_each_message_with_its_reason_and_filters(dlq_api, sqs):
    api, urls, jobs = dlq_api
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get("/dashboard/dlq")
        assert page.status_code == 200
        assert set(ROW.findall(page.text)) == set(jobs)
        for job_id, reason in jobs.values():
            assert job_id in page.text and reason in page.text
        assert "PermanentError" in page.text
        timeouts = client.get("/dashboard/dlq", params={"reason": "TIMEOUT"})
        assert set(ROW.findall(timeouts.text)) == {m for m, (_, r) in jobs.items()
                                                   if r.startswith("timeout")}
        assert ROW.findall(client.get("/dashboard/dlq", params={"type": "images"}).text) == []
        assert client.get("/dashboard/dlq", params={"queue": "nope"}).status_code == 404
    assert queue_counts(sqs, urls["dlq"]) == (3, 0)  # a look leaves them where they were


def test_a_message_body_opens(dlq_api):
    api, _, jobs = dlq_api
    message_id, (job_id, _) = next(iter(jobs.items()))
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get(f"/dashboard/dlq/articles/messages/{message_id}")
        assert page.status_code == 200
        assert f"&#34;jobId&#34;: &#34;{job_id}&#34;" in page.text  # escaped JSON
        assert "vip_source_message_id" in page.text
        assert client.get("/dashboard/dlq/articles/messages/missing").status_code == 404


def test_redrive_selected_then_matching_then_delete_the_rest(dlq_api, sqs):
    api, urls, jobs = dlq_api
    timeouts = [m for m, (_, r) in jobs.items() if r.startswith("timeout")]
    with signed_in(api, api.keys["admin"]) as client:
        refused = post(client, {"action": "redrive", "scope": "selected",
                                "message_id": timeouts[0]})  # no confirmation
        assert refused.status_code == 403
        assert queue_counts(sqs, urls["dlq"]) == (3, 0)
        one = post(client, {"action": "redrive", "scope": "selected",
                            "message_id": timeouts[0], "confirm": "yes"})
        assert one.status_code == 200 and "Moved <b>1</b>" in one.text
        assert queue_counts(sqs, urls["url"]) == (1, 0)
        assert queue_counts(sqs, urls["dlq"]) == (2, 0)
        matching = post(client, {"action": "redrive", "scope": "matching",
                                 "reason": "timeout", "count": "2", "confirm": "yes"})
        assert "Moved <b>1</b>" in matching.text
        assert queue_counts(sqs, urls["url"]) == (2, 0)
        left = ROW.findall(client.get("/dashboard/dlq").text)
        assert left == [m for m, (_, r) in jobs.items() if r.startswith("bad request")]
        gone = post(client, {"action": "delete", "scope": "matching", "count": "1",
                             "confirm": "yes"})
        assert "Deleted <b>1</b>" in gone.text
        assert queue_counts(sqs, urls["dlq"]) == (0, 0)
        assert queue_counts(sqs, urls["url"]) == (2, 0)


def test_bad_forms_and_viewers_are_refused(dlq_api, sqs):
    api, urls, jobs = dlq_api
    with signed_in(api, api.keys["admin"]) as client:
        assert post(client, {"action": "explode", "scope": "matching",
                             "confirm": "yes"}).status_code == 422
        assert post(client, {"action": "delete", "scope": "selected",
                             "confirm": "yes"}).status_code == 422  # nothing selected
    viewer = create_key(api.settings.web_keys_file, "support", "viewer")[1]
    with signed_in(api, viewer) as client:
        page = client.get("/dashboard/dlq")
        assert page.status_code == 200 and 'name="message_id"' not in page.text
        assert post(client, {"action": "delete", "scope": "matching",
                             "confirm": "yes"}).status_code == 403
    assert queue_counts(sqs, urls["dlq"]) == (3, 0)


def test_sqs_unreachable_is_a_page_and_a_503_never_a_500(web_api):
    dead_end = "http://127.0.0.1:9"  # discard port: nothing listens
    api = web_api(queues=False, environ={
        "ARTICLES_QUEUE_URL": f"{dead_end}/000000000000/articles",
        "AWS_ENDPOINT_URL_SQS": dead_end})
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get("/dashboard/dlq")
        assert page.status_code == 200 and "Cannot read this queue" in page.text
        assert client.get("/dashboard/dlq/articles/messages/m-1").status_code == 503
        assert post(client, {"action": "delete", "scope": "matching", "count": "3",
                             "confirm": "yes"}).status_code == 503


def test_a_body_nested_too_deep_breaks_no_page_nor_action(dlq_api, sqs):
    api, urls, jobs = dlq_api
    deep = sqs.send_message(QueueUrl=urls["dlq"],
                            MessageBody="[" * 100_000 + "]" * 100_000)["MessageId"]
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get("/dashboard/dlq")
        assert page.status_code == 200 and deep in ROW.findall(page.text)
        assert client.get(f"/dashboard/dlq/articles/messages/{deep}").status_code == 200
        matching = post(client, {"action": "delete", "scope": "matching", "reason": "timeout",
                                 "count": "4", "confirm": "yes"})
        assert matching.status_code == 200 and "Deleted <b>2</b>" in matching.text
    assert queue_counts(sqs, urls["dlq"]) == (2, 0)  # the deep one visible again


def test_delete_all_acts_on_the_count_the_page_showed(dlq_api, sqs, caplog):
    api, urls, jobs = dlq_api
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get("/dashboard/dlq", params={"queue": "articles"})
        assert 'name="count" value="3"' in page.text
        later = {dead_letter(sqs, urls["dlq"], uuid.uuid4().hex[:24]) for _ in range(2)}
        with caplog.at_level("INFO", logger="vip_worker.web.dashboard"):
            gone = post(client, {"action": "delete", "scope": "matching", "count": "3",
                                 "confirm": "yes"})
        assert gone.status_code == 200 and "Deleted <b>3</b>" in gone.text
        assert queue_counts(sqs, urls["dlq"]) == (2, 0)  # the later ones are not touched
        logged = [i for r in caplog.records if r.getMessage() == "dashboard.action"
                  and r.action == "dlq.deleted" for i in r.message_ids]
        assert len(set(logged)) == 3  # the audit: every id deleted
        assert set(logged) | {m["MessageId"] for m in receive_all(sqs, urls["dlq"])} == \
            set(jobs) | later
        bad = post(client, {"action": "delete", "scope": "matching", "confirm": "yes"})
        assert bad.status_code == 422 and "count" in bad.text


def test_selected_ids_not_found_are_reported(dlq_api, sqs):
    api, urls, jobs = dlq_api
    some = next(iter(jobs))
    with signed_in(api, api.keys["admin"]) as client:
        answer = post(client, {"action": "delete", "scope": "selected", "confirm": "yes",
                               "message_id": [some, "not-in-the-dlq"]})
        assert answer.status_code == 200 and "Deleted <b>1</b>" in answer.text
        assert "Not found" in answer.text and "not-in-the-dlq" in answer.text
        moved = post(client, {"action": "redrive", "scope": "selected", "confirm": "yes",
                              "message_id": "gone-too"})
        assert "Moved <b>0</b>" in moved.text and "gone-too" in moved.text
        assert "Not finished" not in moved.text
    assert queue_counts(sqs, urls["dlq"]) == (2, 0)


def test_a_dashboard_redrive_journals_its_selection(dlq_api, sqs, monkeypatch):
    api, urls, jobs = dlq_api
    from vip_worker.ops import redrive
    from vip_worker.ops.journal import read_journal

    def interrupted(*args, **kwargs):
        return redrive.STOPPED  # as if the web process stopped before it moved any

    monkeypatch.setattr(redrive, "move_messages", interrupted)
    picked = sorted(jobs)[:2]
    with signed_in(api, api.keys["admin"]) as client:
        answer = post(client, {"action": "redrive", "scope": "selected", "confirm": "yes",
                               "message_id": picked})
        assert "Not finished" in answer.text
    [path] = glob.glob(os.path.join(state_dir(api.settings), "redrive", "*.journal"))
    run, _ = read_journal(path)
    assert run["budget"] == 2 and run["selection"] == {"ids": picked}


def test_search_values_and_dlq_bodies_come_back_escaped(dlq_api, sqs):
    api, urls, jobs = dlq_api
    script = '"><script>alert(1)</script>'
    hostile = sqs.send_message(QueueUrl=urls["dlq"], MessageBody=script)["MessageId"]
    with signed_in(api, api.keys["admin"]) as client:
        page = client.get(f"/dashboard/dlq/articles/messages/{hostile}")
        assert page.status_code == 200 and "&lt;script&gt;" in page.text
        assert "<script>alert" not in page.text
        search = client.get("/dashboard/dlq", params={"reason": script})
        assert search.status_code == 200 and "&#34;&gt;&lt;script&gt;" in search.text
        assert "<script>alert" not in search.text
