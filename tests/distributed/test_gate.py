"""The cluster gate's rules, on one event loop (the actor runs exactly this object)."""

from __future__ import annotations

import asyncio
import time

from rhizome.engine.distributed.gate import Gate, Ledger


async def test_the_cap_holds_and_releases_hand_permits_on_in_order() -> None:
    gate = Gate(2)
    await gate.acquire("a", 0)
    await gate.acquire("b", 1)
    third = asyncio.create_task(gate.acquire("a", 2))
    await asyncio.sleep(0.01)
    assert not third.done()
    assert gate.in_flight == 2
    gate.release("b")
    await asyncio.wait_for(third, 1)
    assert gate.held == {"a": 2, "b": 0}
    assert gate.max_in_flight == 2


async def test_a_429_lowers_the_cap_and_pauses_everyone_for_retry_after() -> None:
    gate = Gate(3)
    await gate.acquire("a", 0)
    gate.backoff(0.2)
    assert gate.limit == 2
    start = time.monotonic()
    await asyncio.wait_for(gate.acquire("b", 1), 2)
    assert time.monotonic() - start >= 0.18


async def test_a_silent_holder_loses_its_permits_after_the_ttl() -> None:
    gate = Gate(1, ttl=0.05)
    await gate.acquire("dead", 0)
    waiting = asyncio.create_task(gate.acquire("alive", 1))
    await asyncio.sleep(0.1)
    gate.beat("alive")
    assert gate.reap() == ["dead"]
    await asyncio.wait_for(waiting, 1)
    assert gate.held.get("dead") is None
    assert gate.in_flight == 1


async def test_a_cancelled_wait_gives_back_nothing_it_did_not_get() -> None:
    gate = Gate(1)
    await gate.acquire("a", 0)
    waiting = asyncio.create_task(gate.acquire("b", 1))
    await asyncio.sleep(0.01)
    gate.cancel("b", 1)  # still queued: leaves the queue
    assert gate.in_flight == 1
    waiting.cancel()
    gate.cancel("a", 0)  # already granted: the permit goes back
    assert gate.in_flight == 0


def test_the_ledger_keeps_rows_until_forgotten() -> None:
    ledger = Ledger()
    ledger.record({"s:k1": {"index": 1}, "s:k2": {"index": 2}})
    assert ledger.lookup(["s:k1", "s:k3"]) == {"s:k1": {"index": 1}}
    ledger.forget(["s:k1"])
    assert ledger.lookup(["s:k1", "s:k2"]) == {"s:k2": {"index": 2}}
