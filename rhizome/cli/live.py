"""``rhizome run --stream``: a run's tokens and steps printed as they happen.

Tokens of each output field are written as they arrive, under a
``path.field:`` heading; retries, further attempts and tool calls get a line
of their own in brackets. Everything goes to one text stream (stderr), so the
outputs printed at the end on stdout stay as without ``--stream``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO

from rhizome.engine.events import (
    Event,
    LMCallStarted,
    Retry,
    RunFinished,
    Token,
    ToolCall,
    ToolResult,
)
from rhizome.engine.graphs.streaming import EventStream

if TYPE_CHECKING:
    from rhizome.engine.example import Prediction

__all__ = ("LivePrinter", "run_live")


@dataclasses.dataclass
class LivePrinter:
    """Writes a run's events to ``out`` as a person would want to watch them."""

    out: TextIO
    _at: tuple[str, str] | None = None  # the field whose tokens are being written
    _open: bool = False  # the last line is not finished

    def show(self, event: Event) -> None:
        """Write what ``event`` says, if it says something worth a reader's attention."""
        if isinstance(event, Token):
            self._token(event)
        elif isinstance(event, Retry):
            self._line(f"[{event.path or 'LM'}: retry {event.retry} — {event.reason}]")
        elif isinstance(event, LMCallStarted) and event.attempt > 0:
            self._line(f"[{event.path}: attempt {event.attempt + 1} — {event.note or 'again'}]")
        elif isinstance(event, ToolCall):
            self._line(f"[{event.path}: {event.tool}({event.args!r})]")
        elif isinstance(event, ToolResult):
            self._line(f"[{event.path}: {event.tool} returned {_short(event.observation)}]")
        elif isinstance(event, RunFinished):
            self._end_line()

    def _token(self, event: Token) -> None:
        where = (event.path, event.field)
        if where != self._at:
            self._end_line()
            self.out.write(f"{event.path}.{event.field}: ")
            self._at = where
        self.out.write(event.text)
        self._open = True
        self.out.flush()

    def _line(self, text: str) -> None:
        self._end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        """Finish the line being written, if any."""
        self._end_line()

    def _end_line(self) -> None:
        if self._open:
            self.out.write("\n")
            self.out.flush()
        self._open, self._at = False, None


async def run_live(run: Callable[[], Awaitable[Prediction]], out: TextIO) -> Prediction:
    """Run ``run`` listened to, printing its events to ``out``; its prediction.

    Raises:
        Exception: Whatever the run raised, after the events before it were printed.
    """
    printer = LivePrinter(out)
    try:
        async with EventStream(run) as events:
            async for event in events:
                printer.show(event)
                if isinstance(event, RunFinished):
                    prediction: Prediction = event.prediction
                    return prediction
    finally:
        printer.end()
    raise RuntimeError("the run ended without its final event")  # pragma: no cover


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
