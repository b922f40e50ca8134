r"""Output fields read from a reply while it is still being written: the tokens of a stream.

A streamed reply arrives in pieces; :class:`FieldStream` reads them as they
come and reports each output field's text as soon as it is known to belong to
that field:

- JSON replies (:class:`~rhizome.engine.call.adapters.JSONAdapter`): the keys
  of the top-level object are followed character by character; a string
  value is reported decoded (escapes, ``\uXXXX`` and surrogate pairs
  included), any other value as its JSON text.
- Tagged replies (:class:`~rhizome.engine.call.adapters.TextAdapter`): the text
  between ``<field>`` and ``</field>``, with the whitespace around it left out
  the way the parser strips it; text that might be the start of the closing
  tag waits for the next piece.

So the pieces reported for a text field join into exactly the value the
adapter parses from the whole reply. :func:`streamed_complete` is the LM
request of a listened-to predictor call: it asks for a stream when the LM can
give one, and reports the call's start and its tokens (see
:mod:`rhizome.engine.events`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rhizome.engine import events
from rhizome.engine.events import LMCallStarted, Token

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM, LMRequest, LMResponse

__all__ = ("FieldStream", "streamed_complete")


Emit = Callable[[str, str], None]


class FieldStream:
    """Reports each output field's text from a reply given piece by piece.

    Args:
        fields: The output field names, in signature order.
        json: True for a JSON-object reply, False for tagged sections.
        emit: Called with ``(field, text)`` for each piece of a field's text.
    """

    def __init__(self, fields: Sequence[str], *, json: bool, emit: Emit) -> None:
        self._fields = list(fields)
        self._json = json
        self._emit = emit
        self._seen: list[str] = []
        self._reader: _JSONFields | _TaggedFields = self._new_reader()

    def _new_reader(self) -> _JSONFields | _TaggedFields:
        if self._json:
            return _JSONFields(self._fields, self._emit)
        return _TaggedFields(self._fields, self._emit)

    def feed(self, text: str) -> None:
        """Read the next piece of the reply."""
        self._seen.append(text)
        self._reader.feed(text)

    def restart(self) -> None:
        """The reply is being written again from the start."""
        self._seen.clear()
        self._reader = self._new_reader()

    def finish(self, text: str) -> None:
        """The whole reply is ``text``: read what did not arrive piece by piece.

        A reply served whole (from the cache, or by an LM that does not stream)
        is reported here in one piece per field.
        """
        seen = "".join(self._seen)
        if text.startswith(seen):
            self.feed(text[len(seen) :])


# ---- JSON ------------------------------------------------------------------------

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_SPACE = " \t\r\n"


class _JSONFields:
    """A character-level reader of the top-level keys and values of one JSON object."""

    def __init__(self, fields: Sequence[str], emit: Emit) -> None:
        self._names = {name: name for name in fields}
        self._folded = {name.lower(): name for name in fields}
        self._emit = emit
        self._state = "start"
        self._key: list[str] = []
        self._field: str | None = None
        self._escape: str | None = None  # "\\" seen, or "\\uXX.." so far
        self._high: str = ""  # a high surrogate waiting for its pair
        self._depth = 0  # nesting inside a non-string value
        self._in_string = False  # inside a string nested in a non-string value
        self._space = ""  # whitespace held back inside a non-string value

    def feed(self, text: str) -> None:
        out: list[str] = []
        for char in text:
            self._step(char, out)
        self._flush(out)

    def _flush(self, out: list[str]) -> None:
        if out and self._field is not None:
            self._emit(self._field, "".join(out))
        out.clear()

    def _step(self, char: str, out: list[str]) -> None:
        state = self._state
        if state == "string":
            self._string_char(char, out)
        elif state == "raw":
            self._raw_char(char, out)
        elif state == "start":
            if char == "{":
                self._state = "key"
        elif state == "key":
            if char == '"':
                self._state, self._key = "key_text", []
            elif char == "}":
                self._state = "done"
        elif state == "key_text":
            self._key_char(char)
        elif state == "colon":
            if char == ":":
                self._state = "value"
        elif state == "value":
            self._value_start(char, out)

    def _key_char(self, char: str) -> None:
        if self._escape is None and char == "\\":
            self._escape = "\\"
        elif self._escape is not None:
            self._key.append(_ESCAPES.get(char, char))
            self._escape = None
        elif char == '"':
            key = "".join(self._key)
            self._field = self._names.get(key) or self._folded.get(key.lower())
            self._state = "colon"
        else:
            self._key.append(char)

    def _value_start(self, char: str, out: list[str]) -> None:
        if char in _SPACE:
            return
        if char == '"':
            self._state = "string"
            return
        self._state, self._depth, self._in_string, self._space = "raw", 0, False, ""
        self._raw_char(char, out)

    def _string_char(self, char: str, out: list[str]) -> None:
        escape = self._escape
        if escape is None:
            if char == "\\":
                self._escape = "\\"
            elif char == '"':
                self._end_value(out, "key")
            else:
                out.append(char)
            return
        if escape == "\\":
            if char == "u":
                self._escape = "\\u"
                return
            self._escape = None
            self._text(_ESCAPES.get(char, char), out)
            return
        escape += char
        if len(escape) < 6:
            self._escape = escape
            return
        self._escape = None
        try:
            self._text(chr(int(escape[2:], 16)), out)
        except ValueError:
            self._text(escape, out)

    def _text(self, char: str, out: list[str]) -> None:
        """Decoded text, pairing UTF-16 surrogates written as two escapes."""
        if self._high:
            high, self._high = self._high, ""
            if "\udc00" <= char <= "\udfff":
                code = 0x10000 + ((ord(high) - 0xD800) << 10) + (ord(char) - 0xDC00)
                out.append(chr(code))
                return
            out.append("\ufffd")
        if "\ud800" <= char <= "\udbff":
            self._high = char
            return
        out.append(char)

    def _raw_char(self, char: str, out: list[str]) -> None:
        if self._in_string:
            self._in_string = not (char == '"' and not self._escape)
            self._escape = "\\" if char == "\\" and not self._escape else None
        elif char in "[{":
            self._depth += 1
        elif char in "]}" and self._depth:
            self._depth -= 1
        elif char == '"':
            self._in_string = True
        elif self._depth == 0 and char in ",}":
            self._end_value(out, "key" if char == "," else "done")
            return
        if char in _SPACE and not self._in_string:
            self._space += char  # kept back: trailing whitespace is not part of the value
            return
        out.append(self._space + char)
        self._space = ""

    def _end_value(self, out: list[str], state: str) -> None:
        self._flush(out)
        self._state, self._field, self._escape, self._high = state, None, None, ""


# ---- tagged sections ------------------------------------------------------------------


class _TaggedFields:
    """A reader of ``<field>...</field>`` sections, reporting their text as it arrives."""

    def __init__(self, fields: Sequence[str], emit: Emit) -> None:
        self._emit = emit
        self._todo = list(fields)
        self._field: str | None = None
        self._buffer = ""
        self._started = False  # the field's first non-blank character was reported
        self._space = ""  # whitespace held back until text follows it

    def feed(self, text: str) -> None:
        self._buffer += text
        while self._step():
            pass

    def _step(self) -> bool:
        """Read as far as the buffer allows; True when a tag was passed (read on)."""
        if self._field is None:
            return self._find_opening()
        closing = _closing(self._field).search(self._buffer)
        if closing is not None:
            self._report(self._buffer[: closing.start()])
            self._buffer = self._buffer[closing.end() :]
            self._todo.remove(self._field)
            self._field, self._started, self._space = None, False, ""
            return True
        cut = _held_from(self._buffer, self._field)
        self._report(self._buffer[:cut])
        self._buffer = self._buffer[cut:]
        return False

    def _find_opening(self) -> bool:
        if not self._todo:
            self._buffer = ""
            return False
        found = _opening(tuple(self._todo)).search(self._buffer)
        if found is None:
            last = self._buffer.rfind("<")
            self._buffer = self._buffer[last:] if last >= 0 else ""
            return False
        name = found.group(1).lower()
        self._field = next(f for f in self._todo if f.lower() == name)
        self._buffer = self._buffer[found.end() :]
        return True

    def _report(self, text: str) -> None:
        if not text or self._field is None:
            return
        if not self._started:
            text = text.lstrip()
            if not text:
                return
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            self._emit(self._field, self._space + body)
            self._started, self._space = True, held
        else:
            self._space += held


def _opening(names: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"<\s*({alternatives})\s*>", re.IGNORECASE)


def _closing(name: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*/\s*{re.escape(name)}\s*>", re.IGNORECASE)


def _held_from(buffer: str, name: str) -> int:
    """Where text that may still become ``</name>`` starts (``len(buffer)``: nowhere)."""
    last = buffer.rfind("<")
    if last < 0 or ">" in buffer[last:]:
        return len(buffer)
    rest = "".join(buffer[last + 1 :].split()).lower()
    if rest in ("", "/") or (rest.startswith("/") and name.lower().startswith(rest[1:])):
        return last
    return len(buffer)


# ---- the listened-to request ------------------------------------------------------------


async def streamed_complete(
    lm: LM,
    request: LMRequest,
    *,
    sample: int,
    path: str,
    attempt: int,
    note: str,
    fields: Sequence[str] | None,
    json: bool,
) -> LMResponse:
    """``lm.complete(request)`` reported to the run's listener, streamed when it can be.

    The request asks for a stream when the listener wants tokens, the LM's
    capabilities say it streams, and one choice is asked for. The reply's text
    goes through a :class:`FieldStream` over ``fields`` (None: no tokens, as
    for a call whose reply is not read field by field).
    """
    stream = (
        fields is not None
        and events.wants_tokens()
        and request.n == 1
        and getattr(lm.capabilities, "stream", False)
    )
    if stream and not request.stream:
        request = _streaming(request)
    model = lm.name
    events.emit(LMCallStarted(path=path, model=model, attempt=attempt, note=note, streamed=stream))
    sink = None
    if fields is not None and events.wants_tokens() and request.n == 1:

        def token(field: str, text: str) -> None:
            events.emit(Token(path=path, field=field, text=text, attempt=attempt))

        sink = FieldStream(fields, json=json, emit=token)
    with events.lm_call(path, sink if stream else None):
        response = await lm.complete(request, sample=sample)
    if sink is not None and response.choices:
        sink.finish(response.choices[0].text)
    return response


def _streaming(request: LMRequest) -> LMRequest:
    return dataclasses.replace(request, stream=True)
