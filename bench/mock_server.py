"""A lean OpenAI-compatible mock server for the benchmark, run in its own process.

It answers ``POST .../chat/completions`` after a configurable latency with a
reply in whichever format the prompt asks for, so clients parse it as a success:

- rhizome's JSON adapter (``response_format`` with a JSON schema, or "Reply
  with one JSON object with the keys: ...") gets a JSON object;
- rhizome's text adapter ("Reply with <a>, <b>, ...") gets tagged sections;
- DSPy's chat adapter (``[[ ## field ## ]]``) gets those sections, closed by
  ``[[ ## completed ## ]]``.

Control endpoints: ``GET /stats`` (``{"requests": n}``, chat requests since the
last reset), ``GET /last`` (the last chat request body, which the raw floor
replays), ``POST /reset``, ``POST /config`` with ``{"latency": seconds}``.

The server is a bare :class:`asyncio.Protocol` on uvloop (when installed): no
framework, no per-request task, the latency is one ``call_later``. Run it as
``python bench/mock_server.py [--port N] [--latency S] [--cpu K]``; it prints
``PORT <n>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from typing import Any

try:
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - the bench venv has orjson

    def _loads(data: bytes) -> Any:
        return json.loads(data)

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


_DSPY_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")
_TAG = re.compile(r"<(\w+)>")
_JSON_KEYS = "Reply with one JSON object with the keys: "
_TEXT_KEYS = "Reply with <"
_DSPY_KEYS = "Respond with the corresponding output fields"
_SCHEMA_VALUES: dict[str, Any] = {
    "integer": 1,
    "number": 1.0,
    "boolean": True,
    "array": [],
    "object": {},
}


class State:
    """Counters and settings shared by every connection."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self.last = b"{}"  # the last chat request body, for the raw floor to replay


def _value(field: str, kind: str = "string") -> Any:
    return _SCHEMA_VALUES.get(kind, f"{field} from the mock server")


def _schema_reply(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    return json.dumps({k: _value(k, str(v.get("type", "string"))) for k, v in props.items()})


def reply_text(body: dict[str, Any]) -> str:
    """The assistant content that answers ``body`` in the format its prompt asks for."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return _schema_reply(fmt.get("json_schema", {}).get("schema", {}))
    messages = body.get("messages") or []
    last = str(messages[-1].get("content") or "") if messages else ""
    at = last.rfind(_DSPY_KEYS)
    if at >= 0:
        fields = [f for f in _DSPY_FIELD.findall(last, at) if f != "completed"]
        parts = [f"[[ ## {f} ## ]]\n{_value(f)}\n\n" for f in fields]
        return "".join(parts) + "[[ ## completed ## ]]"
    at = last.rfind(_JSON_KEYS)
    if at >= 0:
        keys = last[at + len(_JSON_KEYS) :].rstrip().rstrip(".").split(", ")
        return json.dumps({k: _value(k) for k in keys})
    at = last.rfind(_TEXT_KEYS)
    if at >= 0:
        return "\n".join(f"<{f}>\n{_value(f)}\n</{f}>" for f in _TAG.findall(last, at))
    return "ok"


def _response(status: int, payload: bytes, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + payload


def _completion(body: dict[str, Any], number: int) -> bytes:
    text = reply_text(body)
    return _dumps(
        {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model") or "mock",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i in range(int(body.get("n") or 1))
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses requests out of a byte buffer."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._one():
            pass

    def _one(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return False
        raw = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        close = b"connection: close" in head
        self._handle(head.split(b" ", 2), raw, close)
        return True

    def _handle(self, line: list[bytes], raw: bytes, close: bool) -> None:
        method, path = line[0], line[1]
        state = self.state
        if method == b"post" and path.endswith(b"/chat/completions"):
            state.requests += 1
            state.last = raw
            try:
                data = _completion(_loads(raw), state.requests)
                status = 200
            except ValueError:
                data, status = b'{"error":{"message":"body is not JSON"}}', 400
            out = _response(status, data, close)
            if state.latency > 0:
                asyncio.get_running_loop().call_later(state.latency, self._send, out, close)
            else:
                self._send(out, close)
            return
        if path == b"/stats":
            data = _dumps({"requests": state.requests, "latency": state.latency})
        elif path == b"/last":
            data = state.last
        elif path == b"/reset":
            state.requests = 0
            data = b"{}"
        elif path == b"/config":
            state.latency = float(_loads(raw).get("latency", state.latency))
            data = b"{}"
        else:
            self._send(_response(404, b'{"error":{"message":"no route"}}', close), close)
            return
        self._send(_response(200, data, close), close)

    def _send(self, out: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(out)
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, latency: float) -> None:
    """Serve until killed; print ``PORT <n>`` once listening."""
    state = State(latency)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(state), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line entry: parse options, pin to a CPU if asked, serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(serve(args.port, args.latency))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
