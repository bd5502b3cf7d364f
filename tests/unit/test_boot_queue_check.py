"""The boot's check of the queues (in the preflight child, as at each reload): a queue
SQS says does not exist fails the boot naming it and its URL; any other failure to ask
(unreachable, throttled) is warned about and the daemon starts."""

from __future__ import annotations

import threading

import botocore.exceptions
import pytest

from tests.fakes import FakeSqs
from tests.unit.test_plugin_settings_env_and_secrets import shop_settings
from vip_worker import boot
from vip_worker.sqs import boto as sqs_boto
from vip_worker.testing import capture_logs


class Unreachable:
    """An SqsClient whose every call fails as a closed port does."""

    def queue_attributes(self, url, names):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url=url)


@pytest.fixture
def fake(monkeypatch):
    """The preflight child's SQS client (the child is forked: the patch holds there)."""
    sqs = FakeSqs()
    monkeypatch.setattr(sqs_boto, "connect", lambda *args, **kwargs: sqs)
    return sqs


def test_a_queue_that_does_not_exist_fails_the_boot_naming_it_and_its_url(tmp_path, fake):
    url = fake.create_queue("work") + "-gone"
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL=url)
    problem, _ = boot.preflight(settings)
    assert problem is not None
    assert "queue 'work' does not exist" in problem and url in problem


def test_a_dlq_url_that_does_not_exist_fails_the_boot_too(tmp_path, fake):
    url = fake.create_queue("work")
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL=url,
                             VIP_WORKER_QUEUE_WORK_DLQ_URL=url + "-dlq")
    problem, _ = boot.preflight(settings)
    assert problem is not None and "dlq_url" in problem and url + "-dlq" in problem


def test_queues_that_exist_pass_without_a_word(tmp_path, fake):
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL=fake.create_queue("work"))
    with capture_logs("vip_worker.boot") as records:
        assert boot.preflight(settings)[0] is None
    assert not records.events("queue.unchecked")


@pytest.mark.parametrize("failure", ["unreachable", "ThrottlingException"])
def test_an_sqs_that_cannot_answer_is_warned_about_and_the_boot_goes_on(tmp_path, fake,
                                                                      monkeypatch, failure):
    url = fake.create_queue("work")
    if failure == "unreachable":
        monkeypatch.setattr(sqs_boto, "connect", lambda *args, **kwargs: Unreachable())
    else:
        fake.fail_next("queue_attributes", failure, times=None)
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL=url)
    with capture_logs("vip_worker.boot") as records:
        problem, secrets = boot.preflight(settings)
    assert problem is None and secrets
    (line,) = records.events("queue.unchecked")
    assert line.queue == "work" and line.url == url
    assert ("EndpointConnectionError" if failure == "unreachable" else failure) in line.error
    assert "pollers retry" in line.detail


def test_a_check_that_does_not_answer_in_time_lets_the_boot_go_on(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(boot, "SQS_CHECK_TIMEOUT_S", 0.2)

    class Hangs:
        def queue_attributes(self, url, names):
            threading.Event().wait(30)  # the child exits without waiting for this thread

    monkeypatch.setattr(sqs_boto, "connect", lambda *args, **kwargs: Hangs())
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL="https://sqs.example/1/work")
    with capture_logs("vip_worker.boot") as records:
        assert boot.preflight(settings)[0] is None
    (line,) = records.events("queue.unchecked")
    assert "did not answer within 0.2 s" in line.error


def test_a_client_that_cannot_be_made_is_warned_about_and_the_boot_goes_on(tmp_path,
                                                                            monkeypatch):
    def no_client(*args, **kwargs):
        raise botocore.exceptions.NoRegionError()

    monkeypatch.setattr(sqs_boto, "connect", no_client)
    settings = shop_settings(tmp_path, VIP_WORKER_QUEUE_WORK_URL="https://sqs.example/1/work")
    with capture_logs("vip_worker.boot") as records:
        assert boot.preflight(settings)[0] is None
    (line,) = records.events("queue.unchecked")
    assert "NoRegionError" in line.error
