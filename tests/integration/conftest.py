"""The integration tests' second endpoint: LocalStack, beside moto's server."""

from __future__ import annotations

import boto3
import pytest

from tests.support import localstack


@pytest.fixture(scope="session")
def localstack_endpoint(fake_aws_env, tmp_path_factory):
    """LocalStack's SQS on 127.0.0.1 for the session (skips, saying why, when it
    cannot be built or started here)."""
    running = localstack.start_or_skip(str(tmp_path_factory.mktemp("localstack")))
    yield running.url
    running.stop()


@pytest.fixture(scope="module", params=["moto", "localstack"])
def each_endpoint(request, vip_worker_sqs_endpoint):
    """moto's server, then LocalStack: a module runs against both by overriding
    ``sqs_endpoint`` with this (see test_sqs_wire.py)."""
    if request.param == "moto":
        return vip_worker_sqs_endpoint
    return request.getfixturevalue("localstack_endpoint")


@pytest.fixture
def endpoint_kind(request) -> str:
    """``moto`` or ``localstack``: where this test's ``each_endpoint`` is."""
    return request.node.callspec.params["each_endpoint"]


def boto3_client(endpoint_url: str):
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")
