"""An endpoint's connections, made per running event loop, and its one concurrency limit.

A chat client may serve several event loops over its life (each sync
``graph(...)`` call runs a fresh one, and thread-pool web servers run one per
thread), so :class:`Connections` keeps one :class:`LoopState` per loop:
rhizome's lean HTTP/1.1 pool (:mod:`rhizome.engine.client.http_pool`), or an
``httpx.AsyncClient`` when a ``transport=`` is given or the environment sets a
proxy. A loop's connections are closed when that loop shuts down (through the
loop's async-generator shutdown hook) or by :meth:`Connections.aclose`.

The limit on requests in flight is not per loop: one :class:`SharedLimiter` per
:class:`Connections`, thread-safe and usable from any asyncio loop, so
``max_concurrency`` holds for the endpoint whatever loops and threads use it.
It adapts to the server: each 429 lowers it by one (down to 1) and a run of
successes raises it again, never above ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import threading
import urllib.request
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Protocol

import httpx

from rhizome.engine.client.http_pool import HttpPool, Origin
from rhizome.engine.errors import ConfigError

__all__ = (
    "USER_AGENT",
    "Closeable",
    "Connections",
    "LoopState",
    "SharedLimiter",
    "close_now",
    "close_with_loop",
    "proxied",
    "request_head",
)


USER_AGENT = "rhizome/0.1"


class Closeable(Protocol):
    """Anything holding connections that ``await aclose()`` releases."""

    async def aclose(self) -> None:
        """Close every connection held."""


class SharedLimiter:
    """A cap on requests in flight, shared by every event loop and thread of the process.

    anyio's ``CapacityLimiter`` belongs to the loop that first waits on it, so one
    per loop let each loop send ``max_concurrency`` requests of its own. This one
    keeps its count under a :class:`threading.Lock`; a task that finds no free
    slot waits on a future of its own loop, queued first come, first served, and
    a slot freed on another thread reaches it through ``call_soon_threadsafe``. A
    free slot is taken without a future and without yielding to the loop.

    The cap adapts to the server: :meth:`throttle` on every 429 lowers it by one
    (down to 1), and :meth:`relax` on every success raises it by one after a run
    of ``4 x limit`` successes, never above ``ceiling``. A 429 seen on one loop
    lowers the cap for all of them.

    Args:
        limit: Requests in flight at once, and the ceiling :meth:`relax` returns to.

    Raises:
        ConfigError: ``limit`` is not a positive whole number.
    """

    __slots__ = ("_ceiling", "_in_flight", "_limit", "_lock", "_streak", "_waiters")

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_concurrency must be a whole number >= 1, got {limit!r}")
        self._lock = threading.Lock()
        self._limit = limit
        self._ceiling = limit
        self._in_flight = 0
        self._streak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return (
            f"SharedLimiter(limit={self._limit}, ceiling={self._ceiling}, "
            f"in_flight={self._in_flight}, waiting={len(self._waiters)})"
        )

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (lowered by 429s, at most ``ceiling``)."""
        return self._limit

    @property
    def ceiling(self) -> int:
        """The configured ``max_concurrency``."""
        return self._ceiling

    @property
    def in_flight(self) -> int:
        """Slots held now (granted to a waiter that has not resumed yet included)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Tasks queued for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting (in arrival order) until one is free.

        Raises:
            RuntimeError: No asyncio event loop is running and no slot is free.
        """
        with self._lock:
            if self._in_flight < self._limit and not self._waiters:
                self._in_flight += 1
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            self._abandon(waiter)
            raise

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`; the longest waiter gets it."""
        with self._lock:
            self._in_flight -= 1
            if not self._waiters:
                return
            granted = self._grant()
        self._wake(granted)

    def throttle(self, retry_after: float | None = None) -> None:
        """A 429: the server takes fewer requests at once than we send; send one fewer.

        ``retry_after`` is the server's ``Retry-After`` (seconds), for limiters
        that share the back-off with other processes; this one does not wait.
        """
        with self._lock:
            self._limit = max(1, self._limit - 1)
            self._streak = 0

    def relax(self) -> None:
        """A success: after ``4 x limit`` in a row, probe with one more request at once."""
        if self._limit >= self._ceiling:  # the common case, read without the lock
            return
        with self._lock:
            if self._limit >= self._ceiling:
                return
            self._streak += 1
            if self._streak < 4 * self._limit:
                return
            self._limit += 1
            self._streak = 0
            granted = self._grant()
        self._wake(granted)

    def _grant(self) -> list[asyncio.Future[None]]:
        """Hand free slots to the longest waiters; called with the lock held."""
        granted: list[asyncio.Future[None]] = []
        while self._waiters and self._in_flight < self._limit:
            granted.append(self._waiters.popleft())
            self._in_flight += 1
        return granted

    def _wake(self, granted: list[asyncio.Future[None]]) -> None:
        """Resume granted waiters, each on its own loop."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in granted:
            loop = waiter.get_loop()
            if loop is running:
                _resume(waiter)
                continue
            try:
                loop.call_soon_threadsafe(_resume, waiter)
            except RuntimeError:  # that loop is closed: its task never resumes
                self.release()

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        """A waiter was cancelled: leave the queue, or pass on a slot it was granted."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass  # granted (resumed or not yet): the slot is this task's to give back
            else:
                return
        self.release()


def _resume(waiter: asyncio.Future[None]) -> None:
    # A waiter cancelled after its grant is already done; it gives the slot back itself.
    if not waiter.done():
        waiter.set_result(None)


@dataclasses.dataclass(slots=True)
class LoopState:
    """The connections serving one event loop: a pool or an httpx client."""

    pool: HttpPool | None = None
    client: httpx.AsyncClient | None = None

    @property
    def closeable(self) -> Closeable:
        """The pool or httpx client, whichever this loop uses."""
        return self.pool if self.pool is not None else self.client  # type: ignore[return-value]


class Connections:
    """The connections of one chat endpoint, one :class:`LoopState` per event loop.

    Attributes:
        limiter: The cap on requests in flight, one for every loop and thread.

    Args:
        url: The chat-completions URL every request is posted to.
        headers: HTTP headers sent with every request.
        timeout: Seconds allowed for connecting, sending and each read.
        max_concurrency: Requests in flight at once, over every loop and thread.
        transport: An httpx transport to use instead of real connections.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        max_concurrency: int,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._url = url
        self._headers = headers
        self.origin = Origin.of(httpx.URL(url))
        self.head = request_head(url, self.origin, headers)
        self._timeout = timeout
        self._max_concurrency = max_concurrency
        self._transport = transport
        self.limiter = SharedLimiter(max_concurrency)
        self._ssl: ssl.SSLContext | None = None
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary()
        )

    async def state(self) -> LoopState:
        """The running loop's state, opened on first use.

        Raises:
            ConfigError: No asyncio event loop is running.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "OpenAILM runs on asyncio; run it with asyncio or anyio's asyncio backend"
            ) from None
        state = self._states.get(loop)
        if state is None:
            state = await self._open(loop)
        return state

    async def via_httpx(
        self,
        state: LoopState,
        payload: bytes,
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        read_timeout: float | None = None,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
        """One POST of ``payload`` through httpx: status, body, raw headers, and if streamed.

        With ``on_chunk``, a successful ``text/event-stream`` reply's body goes to
        it as it arrives (as ``HttpPool.request`` does) and the returned body is
        empty; ``read_timeout`` replaces the client's timeout.
        """
        assert state.client is not None
        if on_chunk is None and read_timeout is None:
            reply = await state.client.post(self._url, content=payload)
            return reply.status_code, reply.content, reply.headers.raw, False
        limit = httpx.Timeout(read_timeout) if read_timeout else httpx.USE_CLIENT_DEFAULT
        async with state.client.stream("POST", self._url, content=payload, timeout=limit) as reply:
            kind = reply.headers.get("content-type", "").split(";")[0].strip().lower()
            if on_chunk is None or not reply.is_success or kind != "text/event-stream":
                content = await reply.aread()
                return reply.status_code, content, reply.headers.raw, False
            async for piece in reply.aiter_bytes():
                on_chunk(piece)
            return reply.status_code, b"", reply.headers.raw, True

    async def aclose(self) -> None:
        """Close the running loop's connections (the next use reopens them)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await close_now(loop, [state.closeable])

    async def _open(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        for old_loop in [old for old in self._states if old.is_closed()]:
            del self._states[old_loop]  # its connections were closed when it shut down
        if self.origin.scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # loading CA certificates takes ~20 ms: once
        state = LoopState()
        if self._transport is None and not proxied(self.origin):
            state.pool = HttpPool(
                timeout=self._timeout, ssl_context=self._ssl, max_idle=self._max_concurrency
            )
        else:
            state.client = self._new_client()
        self._states[loop] = state
        await close_with_loop(loop, [state.closeable])
        return state

    def _new_client(self) -> httpx.AsyncClient:
        size = self._max_concurrency
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            transport=self._transport,
            verify=self._ssl if self._ssl is not None else True,
        )


def request_head(url: str, origin: Origin, headers: Mapping[str, str]) -> bytes:
    """The request line and headers of every chat request, up to the Content-Length value."""
    lines = [f"POST {httpx.URL(url).raw_path.decode('ascii')} HTTP/1.1"]
    lines.append(f"Host: {origin.host_header}")
    lines.append(f"User-Agent: {USER_AGENT}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def proxied(origin: Origin) -> bool:
    """True when the environment routes requests to ``origin`` through a proxy."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(origin.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(origin.host)


# ---- closing at loop end ----------------------------------------------------------


class _LoopClients:
    """The pools and httpx clients open on one event loop, closed when that loop shuts down."""

    def __init__(self) -> None:
        self.clients: set[Closeable] = set()
        self.keeper: AsyncGenerator[None, None] | None = None


# Open clients per event loop. This is resource bookkeeping, not settings: it lives
# here rather than on a Connections so that clients of an OpenAILM dropped just before
# ``asyncio.run`` returns are still closed properly by the loop's async-generator
# shutdown (which fully awaits ``_close_at_loop_end``).
_OPEN: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


async def close_with_loop(loop: asyncio.AbstractEventLoop, clients: list[Closeable]) -> None:
    """Have ``clients`` closed when ``loop`` shuts down (``asyncio.run`` returning, say).

    A client bound to one loop cannot be used, or even closed, from another; the
    loop's async-generator shutdown hook closes it while the loop can still run it.
    """
    entry = _OPEN.get(loop)
    if entry is None:
        entry = _OPEN[loop] = _LoopClients()
        entry.keeper = _close_at_loop_end(loop, entry)
        await entry.keeper.asend(None)
    entry.clients.update(clients)


async def _close_at_loop_end(
    loop: asyncio.AbstractEventLoop, entry: _LoopClients
) -> AsyncGenerator[None, None]:
    """Parked at ``yield`` (kept alive by ``entry``) until the loop shuts down."""
    try:
        yield
    finally:
        _OPEN.pop(loop, None)
        for client in list(entry.clients):
            await client.aclose()


async def close_now(loop: asyncio.AbstractEventLoop, clients: list[Closeable]) -> None:
    """Close ``clients`` of the running ``loop`` now, and forget them for its shutdown."""
    entry = _OPEN.get(loop)
    for client in clients:
        if entry is not None:
            entry.clients.discard(client)
        await client.aclose()
