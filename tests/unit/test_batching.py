"""Batcher: per-message calls coalesced into batch calls of up to 10 entries."""

from __future__ import annotations

import asyncio

from tests.fakes import client_error
from vip_worker.batching import Batcher
from vip_worker.sqs.api import EntryFailure


class Recorder:
    """A batch call that records its entries and fails the entries it is told to."""

    def __init__(self, fail_ids=(), code="ReceiptHandleIsInvalid", error=None, gate=None):
        self.batches: list[list[tuple]] = []
        self.fail_ids = set(fail_ids)
        self.code = code
        self.error = error
        self.gate = gate

    async def __call__(self, entries):
        self.batches.append(list(entries))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return [EntryFailure(entry_id, self.code, "no", True)
                for entry_id, receipt, *_ in entries if receipt in self.fail_ids]


def test_25_adds_make_three_calls():
    async def main():
        send = Recorder()
        batcher = Batcher(send)
        futures = [batcher.add((f"r{n}",)) for n in range(25)]
        results = await asyncio.wait_for(asyncio.gather(*futures), 5)
        return send, results

    send, results = asyncio.run(main())
    assert [len(b) for b in send.batches] == [10, 10, 5]
    assert [e[1] for b in send.batches for e in b] == [f"r{n}" for n in range(25)]
    assert all(len({e[0] for e in b}) == len(b) for b in send.batches)  # distinct ids
    assert results == [None] * 25


def test_a_lone_entry_is_sent_after_the_window():
    async def main():
        send = Recorder()
        batcher = Batcher(send, window_s=0.001)
        result = await asyncio.wait_for(batcher.add(("r", 5)), 5)
        return send, result, batcher.timer

    send, result, timer = asyncio.run(main())
    assert send.batches == [[("0", "r", 5)]]
    assert (result, timer) == (None, None)


def test_per_entry_failures_resolve_the_right_futures():
    async def main():
        send = Recorder(fail_ids={"r3", "r12"})
        batcher = Batcher(send)
        futures = [batcher.add((f"r{n}",)) for n in range(15)]
        return await asyncio.wait_for(asyncio.gather(*futures), 5)

    results = asyncio.run(main())
    failed = {n: r for n, r in enumerate(results) if r is not None}
    assert sorted(failed) == [3, 12]
    assert all(f.code == "ReceiptHandleIsInvalid" for f in failed.values())
    assert failed[12].id == "2"  # the entry's position within its own call


def test_a_failed_call_resolves_every_future_with_its_code():
    async def main():
        send = Recorder(error=client_error("AWS.SimpleQueueService.NonExistentQueue"))
        batcher = Batcher(send)
        futures = [batcher.add((f"r{n}",)) for n in range(12)]
        return await asyncio.wait_for(asyncio.gather(*futures), 5)

    results = asyncio.run(main())
    assert len(results) == 12
    assert all(isinstance(r, EntryFailure) for r in results)
    assert {r.code for r in results} == {"AWS.SimpleQueueService.NonExistentQueue"}


def test_an_os_error_is_a_failure_too():
    async def main():
        batcher = Batcher(Recorder(error=ConnectionResetError("reset")))
        return await asyncio.wait_for(batcher.add(("r",)), 5)

    assert asyncio.run(main()).code == "ConnectionResetError"


def test_drain_sends_what_is_pending_and_waits_for_calls_in_flight():
    async def main():
        gate = asyncio.Event()
        send = Recorder(gate=gate)
        batcher = Batcher(send, window_s=60)
        futures = [batcher.add((f"r{n}",)) for n in range(3)]
        drain = asyncio.create_task(batcher.drain())
        for _ in range(10):
            await asyncio.sleep(0)
        waited = not drain.done() and len(send.batches) == 1
        gate.set()
        await asyncio.wait_for(drain, 5)
        return waited, [f.done() for f in futures], batcher.tasks

    waited, done, tasks = asyncio.run(main())
    assert waited
    assert done == [True, True, True]
    assert tasks == set()


def test_an_unexpected_error_still_resolves_the_futures():
    async def main():
        batcher = Batcher(Recorder(error=RuntimeError("cannot schedule new futures")))
        future = batcher.add(("r",))
        await batcher.drain()  # returns once the call has ended, however it ended
        return future.done()

    assert asyncio.run(main())
