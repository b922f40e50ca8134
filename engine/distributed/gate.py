"""One endpoint's limits across a cluster, and the ledger of finished examples.

Every worker process of a Ray run keeps its own LM client, whose limiter caps
that process only. The :class:`Coordinator` actor (one per run) holds the
cap for the whole cluster: before each request a worker's
:class:`GatedLimiter` takes a permit from it, so twenty actors on ten machines
together never have more than ``max_concurrency`` requests in flight at the
endpoint. A 429 seen by any worker lowers the shared cap by one and pauses
every worker for the server's ``Retry-After`` (or a second); a run of
successful grants raises the cap again, as the single-process limiter does.

Permits are leased to a worker process, which beats every second; a process
that stops beating (its node died) loses its permits after ``ttl`` seconds, so
a dead worker never holds the cap down for the rest of the run.

The coordinator also keeps the ledger: finished examples' rows are recorded
as they finish (a few at a time), so when Ray retries a batch whose worker died,
the new attempt takes the finished rows from the ledger instead of sending
their requests again. The driver forgets rows once it has written them.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

from rhizome.engine.client.connections import SharedLimiter

__all__ = ("Coordinator", "Gate", "GatedLimiter", "Ledger")

DEFAULT_PAUSE = 1.0


class Gate:
    """The cluster-wide cap on one endpoint (runs inside the coordinator actor's loop).

    Args:
        cap: Requests in flight at once across the cluster.
        ttl: Seconds after which a silent holder's permits are taken back.
    """

    def __init__(self, cap: int, *, ttl: float = 5.0) -> None:
        self.cap = cap
        self.limit = cap
        self.ttl = ttl
        self.in_flight = 0
        self.max_in_flight = 0
        self.held: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self._waiters: deque[tuple[str, int, asyncio.Future[None]]] = deque()
        self._paused_until = 0.0
        self._streak = 0
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, holder: str, ticket: int) -> None:
        """Wait for a permit for ``holder`` (first come, first served)."""
        self.beat(holder)
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((holder, ticket, future))
        self._pump()
        await future

    def release(self, holder: str) -> None:
        """Give back one of ``holder``'s permits."""
        if self.held.get(holder, 0) > 0:
            self.held[holder] -= 1
            self.in_flight -= 1
        self._pump()

    def cancel(self, holder: str, ticket: int) -> None:
        """``holder`` stopped waiting for ``ticket``: drop the wait, or the permit it got."""
        for item in self._waiters:
            if item[0] == holder and item[1] == ticket:
                self._waiters.remove(item)
                item[2].cancel()
                return
        self.release(holder)

    def backoff(self, seconds: float | None) -> None:
        """A 429: one fewer request at once, and nobody sends for ``seconds``."""
        self.limit = max(1, self.limit - 1)
        self._streak = 0
        wait = DEFAULT_PAUSE if seconds is None else max(0.0, float(seconds))
        self._paused_until = max(self._paused_until, time.monotonic() + wait)

    def beat(self, holder: str) -> None:
        """``holder`` is alive."""
        self.seen[holder] = time.monotonic()

    def reap(self) -> list[str]:
        """Take back the permits of holders silent for ``ttl`` seconds; their names."""
        now = time.monotonic()
        gone = [h for h, t in self.seen.items() if now - t > self.ttl]
        for holder in gone:
            del self.seen[holder]
            self.in_flight -= self.held.pop(holder, 0)
            for item in [w for w in self._waiters if w[0] == holder]:
                self._waiters.remove(item)
                item[2].cancel()
        if gone:
            self._pump()
        return gone

    def stats(self) -> dict[str, Any]:
        """The cap, the current limit, permits out, the most ever out, and live holders."""
        return {
            "cap": self.cap,
            "limit": self.limit,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "holders": len(self.seen),
        }

    def _pump(self) -> None:
        now = time.monotonic()
        if now < self._paused_until:
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._paused_until - now, self._resume)
            return
        while self._waiters and self.in_flight < self.limit:
            holder, _, future = self._waiters.popleft()
            if future.done():
                continue
            future.set_result(None)
            self.held[holder] = self.held.get(holder, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._relax()

    def _relax(self) -> None:
        if self.limit >= self.cap:
            return
        self._streak += 1
        if self._streak >= 4 * self.limit:
            self.limit += 1
            self._streak = 0

    def _resume(self) -> None:
        self._timer = None
        self._pump()


class Ledger:
    """Rows of finished examples by key, until the driver has written them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def record(self, rows: dict[str, dict[str, Any]]) -> None:
        """Keep finished examples' rows by key (successes only: failures run again)."""
        self.rows.update(rows)

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows held for ``keys``."""
        return {k: self.rows[k] for k in keys if k in self.rows}

    def forget(self, keys: Iterable[str]) -> None:
        """Drop rows the driver has written."""
        for key in keys:
            self.rows.pop(key, None)


class Coordinator:
    """The run's coordinator actor: the endpoint gate and the ledger (see the module docstring).

    Args:
        cap: Requests in flight at once across the cluster, or None for no shared cap.
        ttl: Seconds of silence after which a worker's permits are taken back.
    """

    def __init__(self, cap: int | None, ttl: float = 5.0) -> None:
        self.gate = Gate(cap, ttl=ttl) if cap is not None else None
        self.ledger = Ledger()
        self._reaper: asyncio.Task[None] | None = None

    async def acquire(self, holder: str, ticket: int) -> None:
        """See :meth:`Gate.acquire`."""
        gate = self._gate()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(gate))
        await gate.acquire(holder, ticket)

    async def release(self, holder: str) -> None:
        """See :meth:`Gate.release`."""
        self._gate().release(holder)

    async def cancel(self, holder: str, ticket: int) -> None:
        """See :meth:`Gate.cancel`."""
        self._gate().cancel(holder, ticket)

    async def backoff(self, seconds: float | None) -> None:
        """See :meth:`Gate.backoff`."""
        self._gate().backoff(seconds)

    async def beat(self, holder: str) -> None:
        """See :meth:`Gate.beat`."""
        if self.gate is not None:
            self.gate.beat(holder)

    async def stats(self) -> dict[str, Any]:
        """The gate's figures (see :meth:`Gate.stats`) and rows held by the ledger."""
        figures = self.gate.stats() if self.gate is not None else {}
        return {**figures, "ledger": len(self.ledger.rows)}

    async def record(self, rows: dict[str, dict[str, Any]]) -> None:
        """See :meth:`Ledger.record`."""
        self.ledger.record(rows)

    async def lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """See :meth:`Ledger.lookup`."""
        return self.ledger.lookup(keys)

    async def forget(self, keys: list[str]) -> None:
        """See :meth:`Ledger.forget`."""
        self.ledger.forget(keys)

    def _gate(self) -> Gate:
        if self.gate is None:
            raise RuntimeError("this run has no shared endpoint cap")
        return self.gate

    async def _reap_forever(self, gate: Gate) -> None:
        while True:
            await asyncio.sleep(max(0.1, gate.ttl / 4))
            gate.reap()


class GatedLimiter(SharedLimiter):
    """A worker's LM limiter that also takes a permit from the cluster's gate.

    The process's own cap is kept (it bounds this worker's connections); the
    gate's permit is taken after it, so a worker never waits at the gate
    holding more local slots than it can use. Beats keep the lease alive.

    Args:
        limit: The worker's own cap (its LM's ``max_concurrency``).
        coordinator: The run's coordinator actor handle.
        beat_every: Seconds between beats.
    """

    __slots__ = ("_coordinator", "_holder", "_stop", "_tickets")

    def __init__(self, limit: int, coordinator: Any, *, beat_every: float = 1.0) -> None:
        super().__init__(limit)
        self._coordinator = coordinator
        self._holder = uuid.uuid4().hex
        self._tickets = itertools.count()
        self._stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(beat_every,), daemon=True)
        thread.start()

    async def acquire(self) -> None:
        """A local slot, then a cluster permit (both given back if cancelled)."""
        await super().acquire()
        ticket = next(self._tickets)
        try:
            await self._coordinator.acquire.remote(self._holder, ticket)
        except BaseException:
            self._coordinator.cancel.remote(self._holder, ticket)
            super().release()
            raise

    def release(self) -> None:
        """Give back the cluster permit and the local slot."""
        self._coordinator.release.remote(self._holder)
        super().release()

    def throttle(self, retry_after: float | None = None) -> None:
        """A 429: lower the local cap, and pause the whole cluster's sends to this endpoint."""
        super().throttle(retry_after)
        self._coordinator.backoff.remote(retry_after)

    def close(self) -> None:
        """Stop beating (the gate takes the permits back after its ttl)."""
        self._stop.set()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self._coordinator.beat.remote(self._holder)
