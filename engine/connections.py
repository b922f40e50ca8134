"""An endpoint's connections and concurrency limit, made per running event loop.

A chat client may serve several event loops over its life (each sync
``graph(...)`` call runs a fresh one), so :class:`Connections` keeps one
:class:`LoopState` per loop: rhizome's lean HTTP/1.1 pool
(:mod:`rhizome.engine.http`), or an ``httpx.AsyncClient`` when a ``transport=``
is given or the environment sets a proxy, and the :class:`anyio.CapacityLimiter`
every request holds. A loop's connections are closed when that loop shuts down
(through the loop's async-generator shutdown hook) or by
:meth:`Connections.aclose`.

The limiter adapts to the server: each 429 lowers it by one (down to 1) and a
run of successes raises it again, never above ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import anyio
import httpx

from rhizome.engine.errors import ConfigError
from rhizome.engine.http import HttpPool, Origin

USER_AGENT = "rhizome/0.1"


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


@dataclasses.dataclass(slots=True)
class LoopState:
    """The connections and the limiter serving one event loop: a pool or an httpx client.

    The limiter's size adapts to the server: :meth:`throttle` on every 429,
    :meth:`relax` on every success, never above ``ceiling`` (``max_concurrency``).
    """

    limiter: anyio.CapacityLimiter
    pool: HttpPool | None = None
    client: httpx.AsyncClient | None = None
    ceiling: int = 1
    streak: int = 0

    def throttle(self) -> None:
        """A 429: the server takes fewer requests at once than we send; send one fewer."""
        self.limiter.total_tokens = max(1, int(self.limiter.total_tokens) - 1)
        self.streak = 0

    def relax(self) -> None:
        """A success: after ``4 x limit`` in a row, probe with one more request at once."""
        limit = int(self.limiter.total_tokens)
        if limit < self.ceiling:
            self.streak += 1
            if self.streak >= 4 * limit:
                self.limiter.total_tokens = limit + 1
                self.streak = 0

    @property
    def closeable(self) -> _Closeable:
        """The pool or httpx client, whichever this loop uses."""
        return self.pool if self.pool is not None else self.client  # type: ignore[return-value]


class Connections:
    """The connections of one chat endpoint, one :class:`LoopState` per event loop.

    Args:
        url: The chat-completions URL every request is posted to.
        headers: HTTP headers sent with every request.
        timeout: Seconds allowed for connecting, sending and each read.
        max_concurrency: Requests in flight at once on one loop.
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
        self, state: LoopState, payload: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """One POST of ``payload`` through httpx: status, body and raw headers of the reply."""
        assert state.client is not None
        reply = await state.client.post(self._url, content=payload)
        return reply.status_code, reply.content, reply.headers.raw

    async def aclose(self) -> None:
        """Close the running loop's connections (the next use reopens them)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await _close(loop, [state.closeable])

    async def _open(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        for old_loop in [old for old in self._states if old.is_closed()]:
            del self._states[old_loop]  # its connections were closed when it shut down
        if self.origin.scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # loading CA certificates takes ~20 ms: once
        limiter = anyio.CapacityLimiter(self._max_concurrency)
        state = LoopState(limiter=limiter, ceiling=self._max_concurrency)
        if self._transport is None and not proxied(self.origin):
            state.pool = HttpPool(
                timeout=self._timeout, ssl_context=self._ssl, max_idle=self._max_concurrency
            )
        else:
            state.client = self._new_client()
        self._states[loop] = state
        await _register(loop, [state.closeable])
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


async def acquire(limiter: anyio.CapacityLimiter) -> None:
    """Take a slot of ``limiter``; a free one is taken without yielding to the loop.

    anyio's ``acquire`` always yields once, which costs an event-loop iteration
    per request; waiting for a slot still goes through it (and stays fair).
    """
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        await limiter.acquire()


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
        self.clients: set[_Closeable] = set()
        self.keeper: AsyncGenerator[None, None] | None = None


# Open clients per event loop. This is resource bookkeeping, not settings: it lives
# here rather than on a Connections so that clients of an OpenAILM dropped just before
# ``asyncio.run`` returns are still closed properly by the loop's async-generator
# shutdown (which fully awaits ``_close_at_loop_end``).
_OPEN: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


async def _register(loop: asyncio.AbstractEventLoop, clients: list[_Closeable]) -> None:
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


async def _close(loop: asyncio.AbstractEventLoop, clients: list[_Closeable]) -> None:
    entry = _OPEN.get(loop)
    for client in clients:
        if entry is not None:
            entry.clients.discard(client)
        await client.aclose()
