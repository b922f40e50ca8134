"""One ``max_concurrency`` per OpenAILM, whatever event loops and threads use it.

Thread-pool web servers and the sync ``graph(...)`` door each run their own
event loop; the cap (and what a 429 teaches it) must hold across all of them.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

from rhizome.engine.client.connections import SharedLimiter
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LMRequest
from tests.reliability.procs import wait_until
from tests.server import OpenAIServer, Reply


def ask() -> LMRequest:
    return LMRequest(messages=({"role": "user", "content": "hello"},))


def make_lm(server: OpenAIServer, max_concurrency: int = 3) -> OpenAILM:
    return OpenAILM(
        "test-model",
        base_url=server.url,
        cache=None,
        backoff=0.01,
        max_concurrency=max_concurrency,
    )


def in_threads(*mains: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run each coroutine function with ``asyncio.run`` on its own thread, all at once."""
    barrier = threading.Barrier(len(mains))

    def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        barrier.wait(timeout=10)
        asyncio.run(main())

    with ThreadPoolExecutor(len(mains)) as pool:
        for done in [pool.submit(run, main) for main in mains]:
            done.result(timeout=30)


async def complete_many(lm: OpenAILM, count: int) -> None:
    with anyio.fail_after(20):
        await asyncio.gather(*(lm.complete(ask()) for _ in range(count)))


# ---- against the real test server ----------------------------------------------------


def test_three_loops_on_three_threads_share_one_cap(server: OpenAIServer) -> None:
    lm = make_lm(server, max_concurrency=3)
    server.responder = lambda body: Reply(text="x", delay=0.1)
    in_threads(*[lambda: complete_many(lm, 6)] * 3)
    assert server.request_count == 18
    assert server.max_in_flight == 3  # never more, and reached
    assert lm._conns.limiter.in_flight == 0


async def test_cancelled_waiters_leave_every_slot_usable(server: OpenAIServer) -> None:
    lm = make_lm(server, max_concurrency=3)
    server.responder = lambda body: Reply(text="x", delay=0.3)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as holders:
            for _ in range(3):
                holders.start_soon(lm.complete, ask())
            await wait_until(lambda: server.in_flight == 3, 5, "3 requests in flight")
            with anyio.move_on_after(0.05) as waiting:  # five more queue, then give up
                await complete_many(lm, 5)
            assert waiting.cancelled_caught
        assert server.request_count == 3  # the cancelled ones never reached the server
        server.reset()
        server.responder = lambda body: Reply(text="x", delay=0.1)
        await complete_many(lm, 9)
    await lm.aclose()
    assert server.max_in_flight == 3
    assert lm._conns.limiter.in_flight == 0


def test_a_429_on_one_loop_lowers_the_cap_on_another(server: OpenAIServer) -> None:
    lm = make_lm(server, max_concurrency=3)
    server.script([Reply(status=429, text="slow down", headers={"Retry-After": "0"})])
    in_threads(lambda: complete_many(lm, 1))  # a 429, then the retry succeeds
    assert server.request_count == 2
    server.reset()
    server.responder = lambda body: Reply(text="x", delay=0.1)
    in_threads(lambda: complete_many(lm, 4))  # a fresh loop on a fresh thread
    assert server.max_in_flight == 2
    assert lm._conns.limiter.limit == 2


# ---- the limiter itself ----------------------------------------------------------------


async def queue_two(limiter: SharedLimiter) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """Hold the limiter's only slot and queue two waiters behind it."""
    await limiter.acquire()
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert (limiter.in_flight, limiter.waiting) == (1, 2)
    return first, second


def release_here(limiter: SharedLimiter) -> None:
    limiter.release()


def release_from_a_thread(limiter: SharedLimiter) -> None:
    releaser = threading.Thread(target=limiter.release)
    releaser.start()
    releaser.join()  # blocks this loop, so the wake-up is still queued when cancelled


@pytest.mark.parametrize("release", [release_here, release_from_a_thread])
async def test_a_slot_granted_to_a_just_cancelled_waiter_is_passed_on(
    release: Callable[[SharedLimiter], None],
) -> None:
    limiter = SharedLimiter(1)
    first, second = await queue_two(limiter)
    release(limiter)  # granted to first ...
    first.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    limiter.release()
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue_holding_nothing() -> None:
    limiter = SharedLimiter(1)
    first, second = await queue_two(limiter)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (limiter.in_flight, limiter.waiting) == (1, 1)
    limiter.release()
    await asyncio.wait_for(second, 1)
    limiter.release()
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


def test_relax_wakes_a_waiter_on_another_loop() -> None:
    limiter = SharedLimiter(2)
    limiter.throttle()
    assert limiter.limit == 1
    woken = threading.Event()

    async def hold_and_relax() -> None:
        await limiter.acquire()
        await wait_until(lambda: limiter.waiting == 1, 5, "a waiter from the other loop")
        for _ in range(4):  # 4 x limit successes in a row: one more slot
            limiter.relax()
        assert woken.wait(5)
        limiter.release()

    async def wait_for_a_slot() -> None:
        await wait_until(lambda: limiter.in_flight == 1, 5, "the other loop's slot")
        with anyio.fail_after(5):
            await limiter.acquire()
        woken.set()
        limiter.release()

    in_threads(hold_and_relax, wait_for_a_slot)
    assert (limiter.limit, limiter.in_flight, limiter.waiting) == (2, 0, 0)


def test_cap_holds_and_nothing_leaks_under_threads_and_timeouts() -> None:
    limiter = SharedLimiter(3)
    lock = threading.Lock()
    inside = [0, 0]  # now, peak

    async def one(rng: random.Random) -> None:
        try:
            async with asyncio.timeout(rng.choice([0.001, 0.003, 1.0])):
                await limiter.acquire()
        except TimeoutError:
            return
        try:
            with lock:
                inside[0] += 1
                inside[1] = max(inside)
            await asyncio.sleep(rng.random() * 0.002)
            with lock:
                inside[0] -= 1
        finally:
            limiter.release()

    def loop(seed: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def main() -> None:
            rng = random.Random(seed)
            await asyncio.gather(*(one(rng) for _ in range(300)))

        return main

    in_threads(*[loop(seed) for seed in range(4)])
    assert inside == [0, 3]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)
