"""Streamed chat completions: server-sent events read and put back together.

With ``"stream": true`` an OpenAI-compatible server answers
``text/event-stream``: one ``data: {chat.completion.chunk}`` event per piece
of the reply, each choice's text and tool calls as deltas, the finish reason
in a last chunk, the usage in one more when ``stream_options.include_usage``
is set, then ``data: [DONE]``. :class:`StreamReader` takes the body's bytes as
they arrive, hands each text delta to a callback, and at the end gives the
same ``(model, choices, usage)`` as a whole reply, so a streamed call returns
the same :class:`~rhizome.engine.client.protocol.LMResponse`.

A stream is complete when ``[DONE]`` arrived, or when the body ended after
every choice got its finish reason. Anything else (the connection cut, the
body ended early, an ``error`` event, a chunk that is not JSON) is a
:class:`StreamError`: the client retries it like a malformed reply, never
returning the truncated text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import orjson

from rhizome.engine.client.protocol import Choice, ToolCall, Usage

__all__ = ("StreamError", "StreamReader")


class StreamError(Exception):
    """A streamed reply that broke off or could not be read; the message says how."""


@dataclasses.dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Choice:
    text: list[str] = dataclasses.field(default_factory=list)
    calls: dict[int, _Call] = dataclasses.field(default_factory=dict)
    finish: str | None = None


class StreamReader:
    """Reads one streamed reply; :meth:`feed` its bytes, then :meth:`result`.

    Args:
        n: Choices asked for.
        on_text: Called with ``(choice index, text)`` for each text delta, as it arrives.
    """

    def __init__(self, n: int, on_text: Callable[[int, str], None] | None = None) -> None:
        self._n = n
        self._on_text = on_text
        self._buffer = b""
        self._data: list[bytes] = []
        self._choices: dict[int, _Choice] = {}
        self._model = ""
        self._usage = Usage()
        self._done = False
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        """Read the events ``chunk`` completes.

        Raises:
            StreamError: An event is not a chunk of a chat completion, or the
                server sent an error event.
        """
        self._buffer += chunk
        while True:
            cut, size = _line_end(self._buffer)
            if cut < 0:
                return
            line, self._buffer = self._buffer[:cut], self._buffer[cut + size :]
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line:  # a blank line ends the event
            if self._data:
                data, self._data = b"\n".join(self._data), []
                self._event(data)
            return
        if line.startswith(b":"):  # a comment (keep-alive)
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes) -> None:
        self.events += 1
        if data.strip() == b"[DONE]":
            self._done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamError(f"a streamed event is not JSON: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamError(f"a streamed event is not a JSON object: {data[:200]!r}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise StreamError(f"the server sent an error mid-stream: {str(message)[:300]}")
        self._chunk(chunk)

    def _chunk(self, chunk: dict[str, object]) -> None:
        model, usage, choices = chunk.get("model"), chunk.get("usage"), chunk.get("choices")
        if isinstance(model, str) and model:
            self._model = model
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                self._usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
        if not isinstance(choices, list):
            raise StreamError(f"a streamed chunk has no choices list: {str(chunk)[:200]}")
        for wire in choices:
            self._choice_delta(wire)

    def _choice_delta(self, wire: object) -> None:
        if not isinstance(wire, dict):
            raise StreamError(f"a streamed choice is not an object: {str(wire)[:200]}")
        index = wire.get("index", 0)
        if not isinstance(index, int):
            raise StreamError(f"a streamed choice has a bad index: {index!r}")
        choice = self._choices.setdefault(index, _Choice())
        finish = wire.get("finish_reason")
        if isinstance(finish, str):
            choice.finish = finish
        delta = wire.get("delta") or {}
        if not isinstance(delta, dict):
            raise StreamError(f"a streamed delta is not an object: {str(delta)[:200]}")
        text = delta.get("content")
        if isinstance(text, str) and text:
            choice.text.append(text)
            if self._on_text is not None:
                self._on_text(index, text)
        for call in delta.get("tool_calls") or ():
            _call_delta(choice, call)

    def result(self) -> tuple[str, tuple[Choice, ...], Usage]:
        """The whole reply: model, the first ``n`` choices by index, usage.

        Raises:
            StreamError: The stream ended before the reply was complete.
        """
        if self._buffer.strip() or self._data:
            self.feed(b"\n\n")  # a last event not followed by a blank line
        finished = len(self._choices) >= self._n and all(
            c.finish is not None for c in self._choices.values()
        )
        if not (self._done or (finished and self._choices)):
            got = sum(len(t) for c in self._choices.values() for t in c.text)
            raise StreamError(
                f"the stream ended before the reply was complete ({self.events} events, "
                f"{got} characters, no finish reason or [DONE])"
            )
        if len(self._choices) < self._n:
            raise StreamError(f"the stream held {len(self._choices)} choices, {self._n} were asked")
        choices = tuple(_finished(self._choices[i]) for i in sorted(self._choices)[: self._n])
        return self._model, choices, self._usage


def _call_delta(choice: _Choice, call: object) -> None:
    if not isinstance(call, dict):
        raise StreamError(f"a streamed tool call is not an object: {str(call)[:200]}")
    index = call.get("index", len(choice.calls))
    if not isinstance(index, int):
        raise StreamError(f"a streamed tool call has a bad index: {index!r}")
    found = choice.calls.setdefault(index, _Call())
    if isinstance(call.get("id"), str) and call["id"]:
        found.id = call["id"]
    function = call.get("function") or {}
    if isinstance(function, dict):
        if isinstance(function.get("name"), str) and function["name"]:
            found.name = function["name"]
        if isinstance(function.get("arguments"), str):
            found.arguments.append(function["arguments"])


def _finished(choice: _Choice) -> Choice:
    calls = tuple(
        ToolCall(id=c.id, name=c.name, arguments="".join(c.arguments))
        for _, c in sorted(choice.calls.items())
    )
    return Choice(text="".join(choice.text), tool_calls=calls, finish_reason=choice.finish)


def _line_end(buffer: bytes) -> tuple[int, int]:
    r"""Where the first line of ``buffer`` ends and how long its line break is (-1: none yet).

    SSE lines end in ``\n``, ``\r\n`` or a lone ``\r``; a ``\r`` last in the
    buffer waits, since a ``\n`` may follow in the next chunk.
    """
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr < 0 or (0 <= lf < cr):
        return lf, 1
    if cr + 1 < len(buffer):
        return cr, 2 if buffer[cr + 1 : cr + 2] == b"\n" else 1
    return (lf, 1) if lf >= 0 else (-1, 0)
