"""The lean HTTP/1.1 pool against real sockets: the test server and raw asyncio servers."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from rhizome.engine.client.http_pool import HttpPool, Origin
from tests.server import OpenAIServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Starter = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Starter]:
    """Start a bare asyncio server running a handler; yields a starter returning its URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return await reader.readexactly(length)


async def test_httpx_client_over_the_pool_reuses_one_connection(server: OpenAIServer) -> None:
    pool = HttpPool(timeout=5)
    async with httpx.AsyncClient(transport=pool) as client:
        for word in ("one", "two", "three"):
            server.script([word])
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            reply = await client.post(server.url + "/chat/completions", json=body)
            assert reply.status_code == 200
            assert reply.json()["choices"][0]["message"]["content"] == word
    assert server.request_count == 3
    assert server.connections_opened == 1
    assert server.requests[0]["messages"][0]["content"] == "hi"


async def test_chunked_gzip_reply_is_decoded(
    raw_server: Starter,
) -> None:
    payload = json.dumps({"text": "x" * 5000}).encode()
    packed = gzip.compress(payload)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        chunks = [packed[i : i + 700] for i in range(0, len(packed), 700)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        writer.write(head + body[:100])  # in two writes, so the parser sees a partial reply
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(body[100:])
        await writer.drain()
        await reader.read()  # until the client closes

    url = await raw_server(handler)
    pool = HttpPool(timeout=5)
    reply = await pool.request(Origin.of(httpx.URL(url)), b"GET / HTTP/1.1\r\n\r\n")
    await pool.aclose()
    assert reply.status == 200
    assert reply.content == payload


async def test_connection_closed_while_idle_is_replaced(
    raw_server: Starter,
) -> None:
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # keep-alive promised, then closed: the next request must not fail

    url = await raw_server(handler)
    pool, origin = HttpPool(timeout=5), Origin.of(httpx.URL(url))
    request = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    first = await pool.request(origin, request)
    await asyncio.sleep(0.05)
    second = await pool.request(origin, request)
    assert (first.content, second.content) == (b"ok", b"ok")
    assert len(served) == 2
    await pool.aclose()


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "Invalid character in Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection mid-reply"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", "mid-reply"),
        # a header block without end: refused once past the limit, not buffered forever
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\nok", "too large"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 300 + b"\r\nok", "too large"),
    ],
)
async def test_a_malformed_or_cut_reply_raises_a_protocol_error(
    raw_server: Starter, reply: bytes, problem: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()  # then the connection closes

    url = await raw_server(handler)
    pool = HttpPool(timeout=5)
    with pytest.raises(httpx.RemoteProtocolError, match=problem):
        await pool.request(Origin.of(httpx.URL(url)), b"GET / HTTP/1.1\r\n\r\n")
    await pool.aclose()


async def test_a_reply_without_length_runs_until_the_server_closes(raw_server: Starter) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        for piece in (b"HTTP/1.0 200 OK\r\n\r\nall ", b"of ", b"it"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    url = await raw_server(handler)
    pool = HttpPool(timeout=5)
    reply = await pool.request(Origin.of(httpx.URL(url)), b"GET / HTTP/1.1\r\n\r\n")
    assert (reply.content, reply.keep_alive) == (b"all of it", False)
    await pool.aclose()


async def test_silent_server_times_out(raw_server: Starter) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # never answer; return once the client gives up and closes

    url = await raw_server(handler)
    pool = HttpPool(timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        await pool.request(Origin.of(httpx.URL(url)), b"GET / HTTP/1.1\r\n\r\n")
    await pool.aclose()


@pytest.mark.parametrize("pause", [0.0, 0.3])
async def test_timeout_counts_from_each_exchange_on_a_reused_connection(
    raw_server: Starter, pause: float
) -> None:
    """The watchdog armed by one exchange serves the next: a late second reply still
    times out a full window after that reply went quiet, and a slow-but-steady one
    (bytes every 0.1 s, longer than the window in all) does not."""
    replies = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal replies
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            replies += 1
            if replies == 2:  # trickle: 6 bytes, one every 0.1 s
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
                for byte in b"steady":
                    await asyncio.sleep(0.1)
                    writer.write(bytes([byte]))
                    await writer.drain()
            elif replies == 3:
                await reader.read()  # never answer
                return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    origin = Origin.of(httpx.URL(await raw_server(handler)))
    pool = HttpPool(timeout=0.25)
    loop = asyncio.get_running_loop()
    assert (await pool.request(origin, b"GET / HTTP/1.1\r\n\r\n")).content == b"ok"
    await asyncio.sleep(pause)  # 0.3: the first watchdog fires while idle and stops
    assert (await pool.request(origin, b"GET / HTTP/1.1\r\n\r\n")).content == b"steady"
    started = loop.time()
    with pytest.raises(httpx.ReadTimeout):
        await pool.request(origin, b"GET / HTTP/1.1\r\n\r\n")
    assert 0.2 <= loop.time() - started < 1.5
    await pool.aclose()


async def test_refused_connection_raises_connect_error() -> None:
    with socket.socket() as unused:  # bound but not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        origin = Origin("http", "127.0.0.1", unused.getsockname()[1])
        with pytest.raises(httpx.ConnectError):
            await HttpPool(timeout=2).request(origin, b"GET / HTTP/1.1\r\n\r\n")


def test_host_header_leaves_out_default_ports() -> None:
    assert Origin.of(httpx.URL("https://api.example.com/v1")).host_header == "api.example.com"
    assert Origin.of(httpx.URL("http://127.0.0.1:8080/v1")).host_header == "127.0.0.1:8080"


async def test_a_request_cancelled_mid_reply_closes_its_connection(raw_server: Starter) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")  # then nothing more
        await writer.drain()
        if await reader.read() == b"":  # the client closed its end
            closed.set()

    url = await raw_server(handler)
    pool = HttpPool(timeout=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await pool.request(Origin.of(httpx.URL(url)), b"GET / HTTP/1.1\r\n\r\n")
    # Never reused (half a reply is still owed on it) and closed now, not at GC.
    await asyncio.wait_for(closed.wait(), 2)
    await pool.aclose()
