"""A real OpenAI-compatible chat server on 127.0.0.1 for tests.

The server speaks HTTP/1.1 with keep-alive over a real socket, so the HTTP
client is exercised exactly as against a remote endpoint. It runs an asyncio
loop in a background thread of the test process, which keeps hundreds of
concurrent keep-alive connections and thousands of requests cheap.

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Scripting:

- ``server.responder = fn`` where ``fn(body) -> str | Reply``. It is called once
  per requested choice (``n``); ``body`` is a shallow copy of the request JSON
  with ``body["_choice_index"]`` set to the choice index (0-based). The first
  choice decides the HTTP outcome: if it returns a ``Reply`` with a non-200
  status, ``drop=True`` or a ``raw_body``, the request is answered with that at
  once and the other choices are not asked for.
- ``server.script([...])`` queues replies consumed (one per responder call)
  before the responder is asked.
- A request with ``"stream": true`` gets a 200 reply as server-sent events
  (``text/event-stream``, chunked): the text in pieces (``Reply.chunks``, else
  pieces of three characters), tool calls as deltas, the finish reason, the
  usage when ``stream_options.include_usage`` is set, then ``[DONE]``.
  ``Reply.break_after=k`` breaks the stream after ``k`` text pieces (the
  connection dropped, with ``break_how="end"`` the body ended without a
  finish or ``[DONE]``, with ``"error"`` an error event sent and the body
  ended); ``Reply.chunk_delay`` spaces the pieces.
- ``server.requests`` holds every request body received (JSON),
  ``server.raw_requests`` the same bodies as the exact bytes received, and
  ``server.request_headers`` their headers (lower-cased names).

Example:
    >>> server.script([Reply(status=429, headers={"Retry-After": "0"}), "hello"])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, ClassVar


@dataclasses.dataclass(kw_only=True)
class Reply:
    """One scripted answer of the test server.

    Attributes:
        text: The assistant message content (or the error message for non-200).
        status: HTTP status to answer with.
        delay: Seconds to wait before answering.
        headers: Extra response headers (``Retry-After`` ...).
        tool_calls: Tool calls as ``{"name": ..., "arguments": str | dict}``.
        raw_body: Sent verbatim as the body instead of a chat completion.
        drop: Close the connection without answering.
        usage: ``(prompt_tokens, completion_tokens)``; default counts words.
        finish_reason: Overrides ``"stop"`` / ``"tool_calls"``.
        chunks: The text's pieces when streamed (default: three characters each).
        break_after: Streamed: break the stream after this many text pieces.
        break_how: ``"drop"`` closes the connection; ``"end"`` ends the body cleanly
            but without a finish reason or ``[DONE]``; ``"error"`` sends an error
            event (``{"error": {"message": ...}}``), then ends the body.
        chunk_delay: Streamed: seconds between pieces.
    """

    text: str = ""
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    tool_calls: list[dict[str, Any]] | None = None
    raw_body: str | None = None
    drop: bool = False
    usage: tuple[int, int] | None = None
    finish_reason: str | None = None
    chunks: list[str] | None = None
    break_after: int | None = None
    break_how: str = "drop"
    chunk_delay: float = 0.0

    @property
    def final(self) -> bool:
        """True when this reply decides the whole HTTP answer by itself."""
        return self.status != 200 or self.drop or self.raw_body is not None


Responder = Callable[[dict[str, Any]], "str | Reply"]
_Reply = Reply


def _default_responder(body: dict[str, Any]) -> str:
    return "ok"


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(_words(str(m.get("content") or "")) for m in body.get("messages") or ())


class OpenAIServer:
    """An in-process OpenAI-compatible HTTP server (see the module docstring)."""

    Reply: ClassVar[type[_Reply]] = _Reply  # so tests can write server.Reply(...)

    def __init__(self, *, model: str = "test-model") -> None:
        self.model = model
        self.responder: Responder = _default_responder
        self.requests: list[dict[str, Any]] = []
        self.raw_requests: list[bytes] = []
        self.request_headers: list[dict[str, str]] = []
        self.errors: list[BaseException] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections_opened = 0
        self._script: deque[str | _Reply] = deque()
        self._lock = threading.Lock()
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()
        self.port = 0

    # ---- public helpers -------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """How many chat-completion requests arrived so far."""
        with self._lock:
            return self._count

    def script(self, replies: Iterable[str | _Reply]) -> None:
        """Queue replies handed out before falling back to ``responder``."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        """Forget recorded requests, counters and the script."""
        with self._lock:
            self.requests.clear()
            self.raw_requests.clear()
            self.request_headers.clear()
            self.errors.clear()
            self._script.clear()
            self._count = 0
            self.max_in_flight = self.in_flight

    # ---- lifecycle --------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Start serving on a free port; returns self once it accepts connections."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("test server did not start within 10 s")
        return self

    def stop(self) -> None:
        """Close every connection and stop the server thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            def protocol() -> asyncio.StreamReaderProtocol:
                reader = asyncio.StreamReader(loop=loop)
                return _Tracked(reader, self._serve, loop=loop, transports=self._transports)

            self._server = loop.run_until_complete(
                loop.create_server(protocol, "127.0.0.1", 0, backlog=2048)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            ready.set()
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        # A connection accepted just now has a handler task that has not started (and
        # so is not in _tasks yet); cancelled before its first step, it would never
        # close its socket. Let such tasks start first.
        for _ in range(3):
            await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._transports):  # whatever a handler did not close
            transport.abort()
        await self._server.wait_closed()
        # Let the transports' connection_lost callbacks run (they close the sockets)
        # before the loop stops; otherwise a socket is left for the garbage collector.
        for _ in range(3):
            await asyncio.sleep(0)

    # ---- HTTP -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections_opened += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels these connection tasks; ending quietly keeps asyncio
            # from logging every open connection as a failed callback.
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        raw = await reader.readexactly(length) if length else b""
        keep = headers.get("connection", "").lower() != "close"
        if method == "GET" and path.rstrip("/").endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await _write(writer, 200, json.dumps(models), {})
            return keep
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await _write(writer, 404, _error_body(f"no route {method} {path}"), {})
            return keep
        return await self._chat(raw, headers, writer) and keep

    async def _chat(
        self, raw: bytes, headers: dict[str, str], writer: asyncio.StreamWriter
    ) -> bool:
        try:
            body = json.loads(raw)
        except ValueError:
            await _write(writer, 400, _error_body("request body is not JSON"), {})
            return True
        with self._lock:
            self._count += 1
            self.requests.append(body)
            self.raw_requests.append(raw)
            self.request_headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            replies = self._replies(body)
            first = replies[0]
            if first.delay:
                await asyncio.sleep(first.delay)
            if first.drop:
                writer.transport.abort()
                return False
            if first.raw_body is not None:
                await _write(writer, first.status, first.raw_body, first.headers)
            elif first.status != 200:
                await _write(writer, first.status, _error_body(first.text), first.headers)
            elif body.get("stream"):
                return await self._stream(body, replies, writer)
            else:
                payload = self._completion(body, replies)
                await _write(writer, 200, payload, first.headers)
            return True
        finally:
            with self._lock:
                self.in_flight -= 1

    def _next(self, body: dict[str, Any]) -> _Reply:
        with self._lock:
            item = self._script.popleft() if self._script else None
        if item is None:
            try:
                item = self.responder(body)
            except Exception as exc:  # report the responder's bug as a 500
                self.errors.append(exc)
                return _Reply(status=500, text=f"responder raised {exc!r}")
        return item if isinstance(item, _Reply) else _Reply(text=str(item))

    def _replies(self, body: dict[str, Any]) -> list[_Reply]:
        replies: list[_Reply] = []
        for index in range(int(body.get("n") or 1)):
            reply = self._next({**body, "_choice_index": index})
            if reply.final:
                return [reply]
            replies.append(reply)
        return replies

    def _completion(self, body: dict[str, Any], replies: list[_Reply]) -> str:
        choices = []
        completion_tokens = 0
        prompt_tokens = _prompt_tokens(body)
        for index, reply in enumerate(replies):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            finish = "stop"
            if reply.tool_calls:
                message["tool_calls"] = [
                    _tool_call(i, call) for i, call in enumerate(reply.tool_calls)
                ]
                message["content"] = reply.text or None
                finish = "tool_calls"
            choices.append(
                {"index": index, "message": message, "finish_reason": reply.finish_reason or finish}
            )
            if reply.usage is not None:
                prompt_tokens, done = reply.usage
                completion_tokens += done
            else:
                completion_tokens += _words(reply.text)
        with self._lock:
            number = self._count
        return json.dumps(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or self.model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _stream(
        self, body: dict[str, Any], replies: list[_Reply], writer: asyncio.StreamWriter
    ) -> bool:
        """Answer as server-sent events; False when the stream was broken on purpose."""
        with self._lock:
            number = self._count
        model = body.get("model") or self.model
        base = {"id": f"chatcmpl-{number}", "object": "chat.completion.chunk", "model": model}
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Cache-Control: no-cache"]
        head.append("Transfer-Encoding: chunked")
        head.extend(f"{name}: {value}" for name, value in replies[0].headers.items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

        async def event(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps({**base, **data})
            piece = f"data: {text}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

        completion = 0
        for index, reply in enumerate(replies):
            delta = {"role": "assistant", "content": ""}
            await event({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
            for count, piece in enumerate(reply.chunks or _pieces(reply.text)):
                if reply.break_after is not None and count >= reply.break_after:
                    if reply.break_how == "error":
                        await event({"error": {"message": "overloaded", "type": "server_error"}})
                    return await _break(writer, reply.break_how)
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                choice = {"index": index, "delta": {"content": piece}, "finish_reason": None}
                await event({"choices": [choice]})
            for i, call in enumerate(reply.tool_calls or ()):
                await self._stream_call(event, index, i, call)
            finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
            await event({"choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
            completion += reply.usage[1] if reply.usage else _words(reply.text)
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = replies[0].usage[0] if replies[0].usage else _prompt_tokens(body)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
            await event({"choices": [], "usage": {**usage, "total_tokens": prompt + completion}})
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _stream_call(
        event: Callable[[dict[str, Any]], Any], index: int, i: int, call: dict[str, Any]
    ) -> None:
        whole = _tool_call(i, call)
        first = {"index": i, "id": whole["id"], "type": "function"}
        first["function"] = {"name": whole["function"]["name"], "arguments": ""}
        delta: dict[str, Any] = {"tool_calls": [first]}
        await event({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        for piece in _pieces(whole["function"]["arguments"]):
            part = {"index": i, "function": {"arguments": piece}}
            delta = {"tool_calls": [part]}
            await event({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})


class _Tracked(asyncio.StreamReaderProtocol):
    """A stream protocol that keeps its transport in ``transports`` while connected."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        *,
        loop: asyncio.AbstractEventLoop,
        transports: set[asyncio.BaseTransport],
    ) -> None:
        super().__init__(reader, callback, loop=loop)
        self._all = transports
        self._mine: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._mine = transport
        self._all.add(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._all.discard(self._mine)  # type: ignore[arg-type]
        super().connection_lost(exc)


def _pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _break(writer: asyncio.StreamWriter, how: str) -> bool:
    if how in ("end", "error"):  # a clean end of the body, without finish reason or [DONE]
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
    writer.transport.abort()
    return False


def _tool_call(index: int, call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id") or f"call_{index}",
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _error_body(message: str) -> str:
    return json.dumps({"error": {"message": message or "error", "type": "test_error"}})


async def _write(
    writer: asyncio.StreamWriter, status: int, body: str, headers: dict[str, str]
) -> None:
    data = body.encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json"]
    head.append(f"Content-Length: {len(data)}")
    head.extend(f"{name}: {value}" for name, value in headers.items())
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
    await writer.drain()
