"""A small dependency-free progress bar for batches, written to stderr.

On a terminal it redraws one line (at most ten times a second); on anything
else (CI logs, files) it prints a line about every 10 % so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ("Progress",)


class Progress:
    """Count finished items and show count/total, rate, ETA and failures.

    Args:
        total: How many items the batch has.
        enabled: True to show, False to hide, None to show only on a terminal.
        label: A short name shown before the bar.
        stream: Where to write (stderr by default).
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool | None = None,
        label: str = "",
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream)
        self.enabled = self.tty if enabled is None else enabled
        self.total = total
        self.label = label
        self.done = 0
        self.failed = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._next_line = 0

    def update(self, *, ok: bool) -> None:
        """Count one finished item."""
        self.done += 1
        self.failed += 0 if ok else 1
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar (a newline on a terminal)."""
        if self.enabled and self.tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """The current status as one line of text."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 and left else "-"
        width = 20
        filled = width * self.done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        label = f"{self.label} " if self.label else ""
        speed = f"{rate:.1f}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f}s each"
        return f"{label}[{bar}] {self.done}/{self.total} {speed} eta {eta} failed {self.failed}"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
