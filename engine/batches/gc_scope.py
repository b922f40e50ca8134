"""Keeping Python's cyclic garbage collector out of the way of a batch.

A batch keeps hundreds of runs in flight, each holding its prompts, traces and
connections for the whole length of an LM call. Those objects outlive the
youngest generation, so the collector keeps promoting and rescanning them, and
every full collection also walks every object the program imported (chromadb,
pydantic, numpy: hundreds of thousands). Measured on the benchmark's batch of
2,000 requests at concurrency 256 (``bench/README.md``), that was about a third
of rhizome's CPU.

:func:`calm_collector` scopes two changes to the batch and undoes them after:

- ``gc.freeze()``: everything alive when the batch starts (modules, the graph,
  the caller's data) moves to the permanent generation, which no collection
  scans. Reference counting still frees those objects as usual; only cycles
  among them wait for the batch to end. Skipped when something else in the
  process has already frozen objects (a pre-forking server, say), because
  unfreezing afterwards would undo its freeze.
- The youngest generation's threshold is raised to at least 10,000
  allocations, so short-lived garbage is collected in larger, rarer sweeps.
  The thresholds are restored afterwards, unless someone changed them during
  the batch.

Nested and concurrent batches in one process share one scope (counted).
Nothing changes when the collector is disabled (``gc.disable()``).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ("calm_collector",)


_GEN0_THRESHOLD = 10_000


class _State:
    """The process-wide scope: how many batches are inside it and what to restore."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.froze = False
        self.saved: tuple[int, int, int] | None = None
        self.applied: tuple[int, int, int] | None = None


_STATE = _State()


@contextlib.contextmanager
def calm_collector() -> Iterator[None]:
    """Freeze the objects alive now and collect young garbage less often, for the block."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    with _STATE.lock:
        _STATE.depth += 1
        if _STATE.depth > 1 or not gc.isenabled():
            return
        _STATE.froze = gc.get_freeze_count() == 0
        if _STATE.froze:
            gc.freeze()
        gen0, gen1, gen2 = gc.get_threshold()
        _STATE.saved = (gen0, gen1, gen2)
        if gen0 and gen0 < _GEN0_THRESHOLD:  # 0 means the user turned collection off
            _STATE.applied = (_GEN0_THRESHOLD, gen1, gen2)
            gc.set_threshold(*_STATE.applied)


def _leave() -> None:
    with _STATE.lock:
        _STATE.depth -= 1
        if _STATE.depth > 0:
            return
        if _STATE.applied is not None and gc.get_threshold() == _STATE.applied:
            assert _STATE.saved is not None
            gc.set_threshold(*_STATE.saved)
        if _STATE.froze:
            gc.unfreeze()
        _STATE.froze, _STATE.saved, _STATE.applied = False, None, None
