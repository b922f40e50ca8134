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

Replies are parsed by llhttp (Node.js's HTTP parser, through :mod:`httptools`),
fed each read as it arrives: faster than the hand parser it replaced (figures in
``bench/README.md``), and strict. A malformed reply (bad status line or header,
a negative, non-numeric or duplicated ``Content-Length``, a bad chunk size) or
one cut short raises ``httpx.RemoteProtocolError`` naming the problem.

Supported: ``http`` and ``https`` (TLS through :mod:`ssl`), ``Content-Length``,
chunked and read-until-close bodies, gzip/deflate bodies, 1xx interim replies,
and a reply body read as it arrives: given ``on_chunk``, a successful
``text/event-stream`` reply's body goes to it piece by piece, called from the
waiting coroutine (so in its context), and the reply comes back with
``streamed=True`` and no content; the read timeout then applies between pieces.
Not supported: proxies (the client falls back to httpx's own transport when a
proxy is configured), HTTP/2, streaming request bodies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import zlib
from collections.abc import Callable, Iterator

import httptools
import httpx

__all__ = ("MAX_HEADERS", "MAX_HEADER_BYTES", "HttpPool", "Origin", "RawResponse")


Headers = list[tuple[bytes, bytes]]
# A reply's header block may hold at most this many bytes (names and values) and
# headers: an endpoint (or something posing as one) cannot grow memory without end
# before the body starts. Real LM servers send a few hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 256


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
    streamed: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Stale(Exception):
    """The connection closed before any byte of the reply arrived."""


class _HeadTooLarge(Exception):
    """The reply's header block passed :data:`MAX_HEADER_BYTES` or :data:`MAX_HEADERS`."""


class _Trailing(Exception):
    """Bytes followed a whole reply: a second message nobody asked for."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection that carries one request at a time.

    llhttp calls the ``on_*`` methods as it parses; the reply is handed to the
    waiting :meth:`exchange` once a read completes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0
        self.got_data = False
        # The reply being parsed: status, headers, body pieces, and how far it got.
        self.status = 0
        self.headers: Headers = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.keep_alive = True
        self.head_done = False
        self.complete = False
        # Streaming: whether the caller wants the body as it comes, whether this reply
        # is streamed, the pieces not yet handed over, and the wake-up of the waiting
        # coroutine.
        self.want_stream = False
        self.streaming = False
        self.decoder: zlib._Decompress | None = None
        self.pending: list[bytes] = []
        self.progress: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # nothing asked: the server broke the protocol
            self.close()
            return
        self.got_data = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            error = httpx.RemoteProtocolError("the server switched protocols (status 101)")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                error = httpx.RemoteProtocolError(
                    f"the reply's headers are too large (over {MAX_HEADER_BYTES} bytes or "
                    f"{MAX_HEADERS} headers): not an LM server's reply"
                )
            else:
                error = httpx.RemoteProtocolError(f"malformed HTTP reply: {exc}")
        else:
            if self.complete:
                self._deliver(self.keep_alive)
            return
        if self.complete:  # a whole reply, then junk: keep the reply, drop the connection
            self._deliver(keep_alive=False)
        else:
            self._fail(error)
        self.close()

    def eof_received(self) -> bool:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.head_done and _until_close(self):
                self._deliver(keep_alive=False)  # a body without length ends with the stream
            else:
                self._fail(httpx.RemoteProtocolError("the server closed the connection mid-reply"))
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

    # ---- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Trailing
        self.headers, self.body, self.head_done, self.header_bytes = [], [], False, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.status = status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = status >= 200
        self.streaming = self.want_stream and 200 <= status < 300 and _is_event_stream(self)
        if self.streaming and _encoding(self.headers) is not None:
            self.decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header

    def on_body(self, body: bytes) -> None:
        if not self.streaming:
            self.body.append(body)
            return
        if self.decoder is not None:
            body = self.decoder.decompress(body)
        self.pending.append(body)
        self._wake()

    def _wake(self) -> None:
        if self.progress is not None and not self.progress.done():
            self.progress.set_result(None)

    def on_message_complete(self) -> None:
        self.complete = self.status >= 200  # a 1xx reply (100 Continue) is followed by the real one

    # ---- one exchange ------------------------------------------------------

    async def exchange(
        self, data: bytes, on_chunk: Callable[[bytes], None] | None = None
    ) -> RawResponse:
        """Send ``data`` (a whole request) and wait for the whole reply.

        With ``on_chunk``, a streamed reply's body goes to it as it arrives (see
        the module docstring); an exception it raises ends the exchange.
        """
        if self.transport is None or self.closed:
            raise _Stale()
        waiter: asyncio.Future[RawResponse] = self.loop.create_future()
        self.waiter, self.got_data, self.complete, self.head_done = waiter, False, False, False
        self.want_stream = on_chunk is not None
        self.last_data = self.loop.time()
        if self.timer is None:  # a running watchdog stays armed across back-to-back exchanges
            self.timer = self.loop.call_at(self.last_data + self.timeout, self._check_timeout)
        self.transport.write(data)
        try:
            if on_chunk is None:
                return await waiter
            return await self._stream(waiter, on_chunk)
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: the connection state is unknown
            raise
        finally:
            self.waiter = None
            if on_chunk is not None:
                self.progress, self.pending, self.streaming, self.decoder = None, [], False, None

    async def _stream(
        self, waiter: asyncio.Future[RawResponse], on_chunk: Callable[[bytes], None]
    ) -> RawResponse:
        """Hand each piece of the body to ``on_chunk`` until the reply is whole."""
        while True:
            if not self.pending and not waiter.done():
                self.progress = self.loop.create_future()
                await asyncio.wait((self.progress, waiter), return_when=asyncio.FIRST_COMPLETED)
            pieces, self.pending = self.pending, []
            for piece in pieces:
                on_chunk(piece)
            if waiter.done() and not self.pending:
                reply = waiter.result()
                if self.decoder is not None:
                    on_chunk(self.decoder.flush())
                return reply

    def retime(self, timeout: float) -> None:
        """Allow ``timeout`` seconds between reply bytes from now on (the watchdog re-arms)."""
        self.timeout = timeout
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

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

    def _deliver(self, keep_alive: bool) -> None:
        """Hand the parsed reply, its body decoded, to the waiting exchange."""
        if self.streaming:  # the body went to the caller piece by piece
            if self.waiter is not None and not self.waiter.done():
                reply = RawResponse(self.status, self.headers, b"", keep_alive, streamed=True)
                self.waiter.set_result(reply)
            return
        body = b"".join(self.body)
        try:
            content = _decode(body, self.headers)
        except zlib.error as exc:
            self._fail(httpx.RemoteProtocolError(f"the reply body could not be decoded: {exc}"))
            self.close()
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(RawResponse(self.status, self.headers, content, keep_alive))

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

    async def request(
        self,
        origin: Origin,
        data: bytes,
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        read_timeout: float | None = None,
    ) -> RawResponse:
        """Send ``data`` (a complete HTTP/1.1 request) to ``origin``; the whole reply.

        Args:
            origin: Where to send it.
            data: The request's bytes.
            on_chunk: Given, a streamed (``text/event-stream``) success reply's body
                goes to it as it arrives, and the reply has ``streamed=True``.
            read_timeout: Seconds allowed between reply bytes for this request,
                instead of the pool's.

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
            if read_timeout is not None:
                conn.retime(read_timeout)
            try:
                response: RawResponse | None = await conn.exchange(data, on_chunk)
            except _Stale:
                response = None
                if attempt:
                    raise httpx.ReadError(
                        "the server closed the connection without replying"
                    ) from None
            finally:
                self._busy.discard(conn)
                if read_timeout is not None:
                    conn.retime(self._timeout)
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


def _is_event_stream(conn: _Connection) -> bool:
    for key, value in conn.headers:
        if key == b"content-type":
            return value.split(b";")[0].strip().lower() == b"text/event-stream"
    return False


def _encoding(headers: Headers) -> bytes | None:
    for key, value in headers:
        if key == b"content-encoding":
            coding = value.strip().lower()
            return coding if coding in (b"gzip", b"x-gzip", b"deflate") else None
    return None


def _until_close(conn: _Connection) -> bool:
    """True when the reply's body has no length and so runs until the server closes."""
    for key, value in conn.headers:
        if key == b"content-length":
            return False
        if key == b"transfer-encoding" and b"chunked" in value.lower():
            return False
    return True


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
