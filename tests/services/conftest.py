"""The end-to-end fixtures (a real daemon against moto) and a fake metadata service."""

from __future__ import annotations

import logging
import socket

import pytest

from tests.e2e.conftest import ledger, start_daemon  # noqa: F401
from tests.services.fake_imds import FakeImds


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


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == name]


@pytest.fixture
def spot_log():
    """The ``vip_worker.spot`` log records, whatever another test did to logging."""
    logger = logging.getLogger("vip_worker.spot")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
