"""A job store that records which of its methods were called (wraps any ``JobStore``)."""

from __future__ import annotations

from typing import Any


class RecordingStore:
    """Delegates to ``store``; ``calls`` lists the method names called, in order.

    ``failing`` names methods that raise ``StoreUnavailable`` instead (an outage).
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: list[str] = []
        self.failing: set[str] = set()

    def calls_to(self, method: str) -> int:
        return self.calls.count(method)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name in self.failing:
                from vip_worker.store import StoreUnavailable

                raise StoreUnavailable(f"injected outage of {name}")
            return method(*args, **kwargs)

        return call


def tracked_harness(handler, **kwargs):
    """A ``ConsumerHarness`` running ``handler`` for "articles" with the ledger on, over a
    ``RecordingStore`` around a ``MemoryStore``: (harness, store)."""
    from tests.fakes import ConsumerHarness
    from vip_worker.testing import MemoryStore

    store = RecordingStore(MemoryStore())
    return ConsumerHarness({"articles": handler}, store=store, **kwargs), store


def events(caplog, name: str) -> list:
    """The captured records of one log event."""
    return [r for r in caplog.records if r.getMessage() == name]
