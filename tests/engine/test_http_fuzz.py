"""Fuzzing HttpPool's reply path: every valid reply gives its body, every bad one an httpx error.

The bytes go straight into a connection's ``data_received`` (split into arbitrary
reads), then EOF; nothing waits on a socket or a clock, so an example cannot
hang: a reply that would wait forever shows up as an exchange still pending.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from rhizome.engine.client.http_pool import RawResponse, _Connection


class _Wire:
    """A transport that keeps what is written and whether it was closed."""

    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


@contextmanager
def connection() -> Iterator[_Connection]:
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop, timeout=60.0)
        conn.connection_made(_Wire())  # type: ignore[arg-type]
        yield conn
    finally:
        loop.close()


def exchange(conn: _Connection, reads: list[bytes], *, eof: bool) -> RawResponse | Exception:
    """One request on ``conn`` answered by ``reads`` (then EOF if asked): the reply or error."""
    coro = conn.exchange(b"GET / HTTP/1.1\r\n\r\n")
    try:
        waiter = coro.send(None)  # suspended on the reply
    except Exception as exc:  # failed before waiting: a closed connection
        return exc
    for data in reads:
        conn.data_received(data)
    if eof and not conn.closed:
        if not conn.eof_received():
            conn.connection_lost(None)
    if not waiter.done():
        coro.close()
        raise AssertionError(f"the exchange still waits after {len(reads)} reads (eof={eof})")
    try:
        coro.send(None)
    except StopIteration as stop:
        reply: RawResponse = stop.value
        return reply
    except Exception as exc:
        return exc
    raise AssertionError("the exchange did not finish")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


FUZZ = settings(max_examples=100, deadline=timedelta(seconds=1), database=None)

tokens = st.from_regex(rb"\A[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}\Z")
values = st.from_regex(rb"\A[!-~]([ -~\t]{0,30}[!-~])?\Z")  # visible ASCII, inner spaces
extra_headers = st.lists(st.tuples(tokens.map(lambda t: b"x-" + t), values), max_size=6)
cuts = st.lists(st.integers(min_value=0, max_value=5000), max_size=8)


@st.composite
def valid_replies(
    draw: st.DrawFn, framings: tuple[str, ...] = ("length", "chunked", "close")
) -> tuple[bytes, int, bytes, str, list[tuple[bytes, bytes]]]:
    """A well-formed reply: (wire bytes, status, decoded body, framing, extra headers)."""
    status = draw(st.sampled_from([200, 201, 400, 404, 429, 500, 503]))
    body = draw(st.binary(max_size=1500))
    framing = draw(st.sampled_from(framings))
    headers = draw(extra_headers)
    payload = body
    lines = [b"HTTP/1.%d %d %s" % (framing != "close", status, draw(st.sampled_from([b"OK", b""])))]
    lines += [name + b": " + value for name, value in headers]
    if draw(st.booleans()):
        payload = gzip.compress(body)
        lines.append(b"Content-Encoding: gzip")
    if framing == "length":
        lines.append(
            draw(st.sampled_from([b"Content-Length", b"content-length"])) + b": %d" % len(payload)
        )
        wire_body = payload
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        wire_body = chunked(draw, payload)
    else:
        wire_body = payload  # HTTP/1.0, no length: the body runs until the server closes
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if draw(st.booleans()):
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    return head + wire_body, status, body, framing, headers


def chunked(draw: st.DrawFn, payload: bytes) -> bytes:
    """``payload`` in chunks of arbitrary sizes, hex in either case, some with extensions."""
    out, rest = [], payload
    while rest:
        size = draw(st.integers(min_value=1, max_value=max(1, len(rest))))
        piece, rest = rest[:size], rest[size:]
        digits = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(piece)
        ext = draw(st.sampled_from([b"", b";ext=1", b";a"]))
        out.append(digits + ext + b"\r\n" + piece + b"\r\n")
    trailer = draw(st.sampled_from([b"", b"X-Trailer: done\r\n"]))
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


@FUZZ
@given(valid_replies(), cuts)
def test_a_valid_reply_split_anywhere_gives_its_body(
    case: tuple[bytes, int, bytes, str, list[tuple[bytes, bytes]]], at: list[int]
) -> None:
    wire, status, body, framing, headers = case
    with connection() as conn:
        # A reply with a length ends at its last byte: it must not wait for the close.
        reply = exchange(conn, split(wire, at), eof=framing == "close")
        assert isinstance(reply, RawResponse), reply
        assert (reply.status, reply.content) == (status, body)
        assert reply.keep_alive is (framing != "close")
        for name, value in headers:
            assert (name.lower(), value) in reply.headers


kept_alive = valid_replies(framings=("length", "chunked"))


@settings(FUZZ, max_examples=50)
@given(st.lists(st.tuples(kept_alive, cuts), min_size=2, max_size=3))
def test_one_connection_carries_reply_after_reply(
    cases: list[tuple[tuple[bytes, int, bytes, str, list[tuple[bytes, bytes]]], list[int]]],
) -> None:
    with connection() as conn:
        for (wire, status, body, _, _), at in cases:
            reply = exchange(conn, split(wire, at), eof=False)
            assert isinstance(reply, RawResponse), reply
            assert (reply.status, reply.content) == (status, body)
            assert not conn.closed


GOOD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@st.composite
def malformed_replies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A reply broken in one place, and a word the error must name."""
    kind = draw(st.sampled_from(["status", "header", "length", "chunk"]))
    if kind == "status":
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/2", b"HTTP/1.x", b"HTTPS/1.1", b"FOO"]))
        code = draw(
            st.sampled_from([b"200", b"abc", b"20", b"2x0", b"12345", b"-20", b""])
            | st.integers(min_value=1000, max_value=10**6).map(b"%d".__mod__)
        )
        line = version + b" " + code + b" OK"
        if line == b"HTTP/1.1 200 OK":
            line = b"HTTP/1.1 200 OK\n"  # a bare LF ends no line in HTTP
        head = line + b"\r\nContent-Length: 0\r\n"
        return head + b"\r\n", r"status|version|HTTP/|dot|CR"
    if kind == "header":
        bad = draw(
            st.sampled_from([b"no colon", b"bad name: v", b": v", b"(x): v", b"X : v", b" X: v"])
            | st.sampled_from([b"X: a%sb" % bytes([c]) for c in (0, 1, 8, 11, 13, 27, 127)])
        )
        return GOOD + bad + b"\r\nContent-Length: 0\r\n\r\n", r"header|space"
    if kind == "length":
        value = draw(
            st.integers(max_value=-1).map(b"%d".__mod__)
            | st.integers(min_value=2**64, max_value=2**80).map(b"%d".__mod__)
            | st.sampled_from([b"", b"1.5", b"0x10", b"1 2", b"+2", b"abc", b"2, 3"])
        )
        lines = b"Content-Length: " + value
        if draw(st.booleans()):
            lines = b"Content-Length: 2\r\nContent-Length: 3"  # two lengths: which one?
        return GOOD + lines + b"\r\n\r\nok", "Content-Length"
    size = draw(st.sampled_from([b"zz", b"-1", b"0x2", b"", b" 2", b"2 ", b"g", b"1" * 20]))
    chunks = b"2\r\nok\r\n" * draw(st.integers(0, 2)) + size + b"\r\nok\r\n0\r\n\r\n"
    return GOOD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks, "chunk size"


@FUZZ
@given(malformed_replies(), cuts)
def test_a_malformed_reply_raises_a_protocol_error_naming_the_problem(
    case: tuple[bytes, str], at: list[int]
) -> None:
    wire, names = case
    with connection() as conn:
        error = exchange(conn, split(wire, at), eof=True)
        assert isinstance(error, httpx.RemoteProtocolError), error
        assert re.fullmatch(f"malformed HTTP reply: .*({names}).*", str(error), re.I), str(error)
        assert conn.closed


@FUZZ
@given(kept_alive, cuts, st.data())
def test_a_reply_cut_short_then_closed_is_an_error_not_a_short_body(
    case: tuple[bytes, int, bytes, str, list[tuple[bytes, bytes]]],
    at: list[int],
    data: st.DataObject,
) -> None:
    wire = case[0]
    end = data.draw(st.integers(min_value=1, max_value=len(wire) - 1), label="end")
    with connection() as conn:
        error = exchange(conn, split(wire[:end], at), eof=True)
        assert isinstance(error, httpx.RemoteProtocolError), error
        assert "closed the connection mid-reply" in str(error)


def test_a_reply_followed_by_junk_is_kept_but_its_connection_is_dropped() -> None:
    with connection() as conn:
        reply = exchange(
            conn, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE"], eof=False
        )
        assert isinstance(reply, RawResponse)
        assert reply.content == b"ok"
        assert conn.closed


def test_a_close_before_any_byte_is_an_error_and_a_reset_is_stale() -> None:
    with connection() as conn:  # closed cleanly: the server may have seen the request
        error = exchange(conn, [], eof=True)
        assert isinstance(error, httpx.RemoteProtocolError)
    with connection() as conn:  # reset with no reply: the pool sends it once more
        coro = conn.exchange(b"GET / HTTP/1.1\r\n\r\n")
        waiter = coro.send(None)
        conn.connection_lost(ConnectionResetError())
        assert type(waiter.exception()).__name__ == "_Stale"
        coro.close()


def test_a_switch_of_protocols_is_refused() -> None:
    with connection() as conn:
        wire = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        )
        error = exchange(conn, [wire], eof=True)
        assert isinstance(error, httpx.RemoteProtocolError)
        assert "switched protocols" in str(error)


def test_a_body_that_is_not_gzip_is_a_protocol_error() -> None:
    with connection() as conn:
        wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope"
        error = exchange(conn, [wire], eof=False)
        assert isinstance(error, httpx.RemoteProtocolError)
        assert "could not be decoded" in str(error)
