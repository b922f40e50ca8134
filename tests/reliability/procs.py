"""Process helpers for the reliability tests (Linux ``/proc``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren ...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                parents[int(entry)] = parent
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


def command_line(pid: int) -> str:
    """The process's command line with spaces between arguments ('' when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Like :func:`wait_for`, for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await anyio.sleep(0.02)


# Run first in every child that a test interrupts. Python makes SIGINT raise
# KeyboardInterrupt only if SIGINT is not ignored when it starts, and a shell that
# ignores it (`trap "" INT`, a script's background jobs) passes that on to pytest
# and from pytest to its children; so the child sets the handler itself.
_CTRL_C_PROLOGUE = """\
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
mode, target = sys.argv.pop(1), sys.argv.pop(1)
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def interruptible(mode: str, target: str, *args: str) -> list[str]:
    """The command line for ``python -c CODE args`` or ``python -m MODULE args``, in which
    SIGINT raises KeyboardInterrupt however pytest was started (for :func:`interrupt`)."""
    if mode not in ("-c", "-m"):
        raise ValueError(f"mode must be '-c' or '-m', not {mode!r}")
    return [sys.executable, "-c", _CTRL_C_PROLOGUE, mode, target, *args]


async def interrupt(child: Any, *, within: float = 10.0) -> tuple[bytes, float]:
    """Send SIGINT (what Ctrl-C sends) to ``child`` and wait for it to exit.

    Start ``child`` with :func:`interruptible`, so that SIGINT reaches Python in it.

    Returns its whole stderr and the seconds from the signal to its exit.
    """
    sent = time.perf_counter()
    child.send_signal(signal.SIGINT)
    with anyio.fail_after(within):
        assert child.stderr is not None
        err = b"".join([chunk async for chunk in child.stderr])
        await child.wait()
    return err, time.perf_counter() - sent
