"""The bundled example wrapper (examples/plugins/timing.py) through the real daemon."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import envelope

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


def test_timing_wrapper_logs_slow_handlers_of_every_plugin(sqs, make_queue, start_daemon,
                                                            ledger):
    urls = make_queue("timing")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          plugin_dirs=[str(TEST_PLUGINS), str(EXAMPLES)],
                          plugins={"testjobs": {"ledger": str(ledger)},
                                   "timing": {"slow_after_s": 0.2}})
    fast, slow, slow_async = (uuid.uuid4().hex[:24] for _ in range(3))
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(fast, "sleep", {"seconds": 0}))
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(slow, "sleep", {"seconds": 0.4}))
    sqs.send_message(QueueUrl=urls["url"],
                     MessageBody=envelope(slow_async, "async_sleep", {"seconds": 0.4}))
    for job in (fast, slow, slow_async):
        daemon.wait_for("message.succeeded", job_id=job)
    flagged = {r["job_id"]: r for r in daemon.events("timing.slow_handler")}
    assert set(flagged) == {slow, slow_async}
    assert flagged[slow]["elapsed_s"] >= 0.4 and flagged[slow]["type"] == "sleep"
