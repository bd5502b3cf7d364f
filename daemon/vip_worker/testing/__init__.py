"""For plugin authors' own tests: ``make_message`` and ``run_handler`` (one handler
call, classified as the daemon would), ``MemoryStore``, ``capture_logs``,
``write_config``; the ``vip_worker_poller`` pytest fixture lives in
``pytest_plugin`` (registered through the ``pytest11`` entry point).
"""

from vip_worker.testing.helpers import (
    LogRecords,
    MemoryStore,
    Outcome,
    capture_logs,
    make_message,
    run_handler,
    write_config,
)

__all__ = ["LogRecords", "MemoryStore", "Outcome", "capture_logs", "make_message", "run_handler",
           "write_config"]
