"""The dashboard's dead-letter page through real HTTP against moto: reasons, filters, a
message's body, redrive and delete of the selected or all matching messages."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.dashboard import signed_in
from tests.support.ops_cli import dead_letter
from tests.support.sqs import queue_counts
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
