"""The integration tests' second endpoint: LocalStack, beside moto's server."""

from __future__ import annotations

import pytest

from tests.support import localstack


@pytest.fixture(scope="session")
def localstack_endpoint(fake_aws_env, tmp_path_factory):
    """LocalStack's SQS on 127.0.0.1 for the session (skips, saying why, when it
    cannot be built or started here)."""
    running = localstack.start_or_skip(str(tmp_path_factory.mktemp("localstack")))
    yield running.url
    running.stop()
