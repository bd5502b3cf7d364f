"""The job API's ``callbackUrl``: kept in the job's payload, refused (422) by the
callback rules (docs/api.md, "Completion callbacks")."""

from __future__ import annotations

import json

import pytest

from tests.support.web import ARTICLE, bad_fields


def test_a_callback_url_is_sent_in_the_payload_and_kept_on_the_job(web_api, sqs):
    api = web_api()
    body = {**ARTICLE, "callbackUrl": "https://app.example.com/hooks/vip"}
    response = api.post("/api/content/generate", body, api.as_user("u1"))
    assert response.status_code == 202
    job = api.store.get_job(response.json()["jobId"])
    assert job["params"]["callbackUrl"] == "https://app.example.com/hooks/vip"
    url = api.settings.queue("articles").url
    [message] = sqs.receive_message(QueueUrl=url).get("Messages", [])
    assert json.loads(message["Body"])["payload"]["callbackUrl"] == body["callbackUrl"]


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://127.0.0.1/x",
    "http://[::1]/x", "http://10.0.0.5/x", "http://172.16.3.4/x", "http://192.168.0.9/x",
    "http://0.0.0.0/x", "ftp://app.example.com/x", "not a url"])
def test_a_refused_callback_url_answers_422_naming_the_field(web_api, url):
    api = web_api()
    for path, body in (("/api/content/generate", ARTICLE),
                       ("/api/media/generate", {"prompt": "A stadium"})):
        response = api.post(path, {**body, "callbackUrl": url}, api.as_user("u1"))
        assert response.status_code == 422
        assert bad_fields(response) == {"callbackUrl"}


def test_the_allow_list_limits_callback_hosts_and_can_allow_loopback(web_api):
    api = web_api(callback_allowed_hosts=["app.example.com", "127.0.0.1"])
    ok = api.post("/api/content/generate",
                  {**ARTICLE, "callbackUrl": "http://127.0.0.1:9/hook"}, api.as_user("u1"))
    assert ok.status_code == 202
    other = api.post("/api/content/generate",
                     {**ARTICLE, "callbackUrl": "https://evil.example.net/x"}, api.as_user("u1"))
    assert bad_fields(other) == {"callbackUrl"}
