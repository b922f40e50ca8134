"""A lean HTTP/1.1 keep-alive connection pool: the LM client's default transport.

httpcore's pool scans every connection it holds on each request, so its cost
per request grows with the pool: one ``httpx.AsyncClient`` with 256 connections
spends ~18 ms of CPU per request (encode/httpcore#1035, encode/httpx#3215).
:class:`HttpPool` keeps idle connections in a stack (taking and returning one is
O(1)), runs each connection as a bare :class:`asyncio.Protocol` (no task, no
stream wrapper) and writes each request in one ``send``. The LM client's
concurrency limiter bounds how many connections it opens.

It is an ``httpx.AsyncBaseTransport`` (``httpx.AsyncClient(transport=HttpPool())``
works), and :meth:`HttpPool.request` is the allocation-light path the LM client
uses directly. Failures raise httpx's exceptions (``ConnectError``,
``ReadTimeout`` ...), so callers handle both paths alike. A request that fails
on a reused connection before any reply byte arrived (the server closed it
while idle) is sent once more on a fresh connection.

Supported: ``http`` and ``https`` (TLS through :mod:`ssl`), ``Content-Length``,
chunked and read-until-close bodies, gzip/deflate bodies, 1xx interim replies.
Not supported: proxies (the client falls back to httpx's own transport when a
proxy is configured), HTTP/2, streaming bodies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import zlib
from collections.abc import Iterator

import httpx

Headers = list[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        """The origin of ``url`` (default port by scheme)."""
        port = url.port or (443 if url.scheme == "https" else 80)
        return cls(url.scheme, url.host, port)

    @property
    def host_header(self) -> str:
        """The value of the ``Host`` header."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclasses.dataclass(slots=True)
class RawResponse:
    """A reply as read off the wire: status, raw headers (lower-case names), body."""

    status: int
    headers: Headers
    content: bytes
    keep_alive: bool = True

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Stale(Exception):
    """The connection closed before any byte of the reply arrived."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection that carries one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = bytearray()
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0
        self.got_data = False
        self.eof = False
        self.head: tuple[int, Headers, bool] | None = None
        self.body_start = 0

    # ---- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: the server broke the protocol
            self.close()
            return
        self.buffer += data
        self.got_data = True
        self.last_data = self.loop.time()
        self._advance()

    def eof_received(self) -> bool:
        self.eof = True
        if self.waiter is not None:
            self._advance()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiter is not None and not self.waiter.done():
            if not self.got_data:
                self._fail(_Stale())
            else:
                self._fail(httpx.RemoteProtocolError("the server closed the connection mid-reply"))

    # ---- one exchange ------------------------------------------------------

    async def exchange(self, data: bytes) -> RawResponse:
        """Send ``data`` (a whole request) and wait for the whole reply."""
        if self.transport is None or self.closed:
            raise _Stale()
        waiter: asyncio.Future[RawResponse] = self.loop.create_future()
        self.waiter, self.got_data, self.eof, self.head = waiter, False, False, None
        self.buffer.clear()
        self.last_data = self.loop.time()
        if self.timer is None:  # a running watchdog stays armed across back-to-back exchanges
            self.timer = self.loop.call_at(self.last_data + self.timeout, self._check_timeout)
        self.transport.write(data)
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: the connection state is unknown
            raise
        finally:
            self.waiter = None

    def _check_timeout(self) -> None:
        """The watchdog: fail the exchange in flight once it has had no data for the timeout.

        One timer per connection, re-armed from here only while an exchange is in
        flight, instead of a timer set and cancelled for every request.
        """
        self.timer = None
        if self.waiter is None or self.closed:
            return  # idle: the next exchange arms it again
        quiet = self.loop.time() - self.last_data
        if quiet < self.timeout:  # data came meanwhile: wait for the rest of the window
            self.timer = self.loop.call_later(self.timeout - quiet, self._check_timeout)
            return
        self._fail(httpx.ReadTimeout(f"no data for {self.timeout:g} s"))
        self.close()

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _advance(self) -> None:
        try:
            response = self._parse()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)
            self.close()
            return
        if response is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)

    def _parse(self) -> RawResponse | None:
        while self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if self.eof:
                    raise httpx.RemoteProtocolError("the server closed the connection mid-reply")
                return None
            status, headers, keep = _parse_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
            if 100 <= status < 200:
                continue  # interim reply (100 Continue): the real one follows
            self.head = (status, headers, keep)
        status, headers, keep = self.head
        body = self._body(headers)
        if body is None:
            return None
        return RawResponse(status, headers, _decode(body, headers), keep and not self.eof)

    def _body(self, headers: Headers) -> bytes | None:
        length, chunked = None, False
        for key, value in headers:
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return _dechunk(self.buffer, self.eof)
        if length is not None:
            if len(self.buffer) >= length:
                return bytes(self.buffer[:length])
            if self.eof:
                raise httpx.RemoteProtocolError("the server closed the connection mid-reply")
            return None
        return bytes(self.buffer) if self.eof else None  # read until close

    def close(self) -> None:
        """Close the connection now."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class HttpPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept alive per origin and reused last-in, first-out.

    Args:
        timeout: Seconds allowed for connecting, and between reply bytes.
        ssl_context: TLS settings for ``https`` (a default context when None).
        max_idle: Idle connections kept per origin; more are closed.
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 1024,
    ) -> None:
        self._timeout = timeout
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()

    async def request(self, origin: Origin, data: bytes) -> RawResponse:
        """Send ``data`` (a complete HTTP/1.1 request) to ``origin``; the whole reply.

        Raises:
            httpx.ConnectError / httpx.ConnectTimeout: No connection could be made.
            httpx.ReadTimeout: The server went quiet for longer than the timeout.
            httpx.RemoteProtocolError: The reply was malformed or cut short.
        """
        idle = self._idle.setdefault(origin, [])
        conn = _pop_live(idle)
        for attempt in (0, 1):
            if conn is None:
                conn = await self._connect(origin)
            self._busy.add(conn)
            try:
                response: RawResponse | None = await conn.exchange(data)
            except _Stale:
                response = None
                if attempt:
                    raise httpx.ReadError(
                        "the server closed the connection without replying"
                    ) from None
            finally:
                self._busy.discard(conn)
            if response is None:  # closed while idle: once more on a fresh connection
                conn = None
                continue
            if response.keep_alive and not conn.closed and len(idle) < self._max_idle:
                idle.append(conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self._timeout)
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self._timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting took over {self._timeout:g} s") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Serve one ``httpx.Request`` (so ``httpx.AsyncClient(transport=pool)`` works)."""
        body = await request.aread()
        origin = Origin.of(request.url)
        lines = [f"{request.method} ".encode() + request.url.raw_path + b" HTTP/1.1"]
        names = {key.lower() for key, _ in request.headers.raw}
        if b"host" not in names:
            lines.append(b"Host: " + origin.host_header.encode())
        lines.extend(key + b": " + value for key, value in request.headers.raw)
        if b"content-length" not in names and b"transfer-encoding" not in names:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        reply = await self.request(origin, b"\r\n".join(lines) + b"\r\n\r\n" + body)
        headers = [(k, v) for k, v in reply.headers if k not in _DECODED]
        return httpx.Response(
            reply.status,
            headers=headers,
            content=reply.content,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        for conn in [*self._connections(), *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports finish closing on this loop

    def _connections(self) -> Iterator[_Connection]:
        for conns in self._idle.values():
            yield from conns


# Headers that describe the raw body, which handle_async_request has already decoded.
_DECODED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


def _pop_live(idle: list[_Connection]) -> _Connection | None:
    while idle:
        conn = idle.pop()
        if not conn.closed and conn.transport is not None:
            return conn
    return None


def _parse_head(head: bytes) -> tuple[int, Headers, bool]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x reply: {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise httpx.RemoteProtocolError(f"bad status line: {lines[0][:80]!r}") from None
    headers: Headers = []
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if sep:
            headers.append((key.strip().lower(), value.strip()))
    connection = next((v.lower() for k, v in headers if k == b"connection"), b"")
    keep = b"close" not in connection if parts[0] == b"HTTP/1.1" else b"keep-alive" in connection
    return status, headers, keep


def _dechunk(buffer: bytearray, eof: bool) -> bytes | None:
    """The body of a complete chunked reply in ``buffer``, or None while it is partial."""
    out = bytearray()
    pos = 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            break
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            if buffer.find(b"\r\n\r\n", line_end) >= 0:  # end of the (empty) trailers
                return bytes(out)
            break
        start = line_end + 2
        if len(buffer) < start + size + 2:
            break
        out += buffer[start : start + size]
        pos = start + size + 2
    if eof:
        raise httpx.RemoteProtocolError("the server closed the connection mid-reply")
    return None


def _decode(body: bytes, headers: Headers) -> bytes:
    for key, value in headers:
        if key == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip"):
                return zlib.decompress(body, 16 + zlib.MAX_WBITS)
            if coding == b"deflate":
                try:
                    return zlib.decompress(body)
                except zlib.error:
                    return zlib.decompress(body, -zlib.MAX_WBITS)
    return body
