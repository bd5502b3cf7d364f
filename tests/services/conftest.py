"""The end-to-end fixtures (a real daemon against moto) and a fake metadata service."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.conftest import ledger, start_daemon  # noqa: F401
from tests.services.fake_imds import FakeImds
from vip_worker.testing import capture_logs


@pytest.fixture
def imds():
    fake = FakeImds().start()
    yield fake
    fake.stop()


@pytest.fixture
def free_port():
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def spot_log():
    """The ``vip_worker.services.spot`` log records, whatever another test did to logging."""
    with capture_logs("vip_worker.services.spot") as records:
        yield records
