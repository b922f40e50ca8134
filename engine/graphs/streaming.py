"""A run's events as an async iterator: what :meth:`Graph.events` returns.

The run goes in its own asyncio task, listened to (:func:`rhizome.engine.events.listening`);
every event it reports is queued and handed out in order, and the last one is
:class:`~rhizome.engine.events.RunFinished` with the graph's outputs and the
prediction (its trace included). A run that fails ends the iteration by
raising its error, after the events that led to it. Leaving early (``break``,
or ``aclose()``, or the ``async with`` block) cancels the run::

    async for event in graph.events(question="Who wrote Hamlet?"):
        if isinstance(event, Token):
            print(event.text, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from rhizome.engine import events
from rhizome.engine.events import Event, RunFinished

if TYPE_CHECKING:
    from rhizome.engine.example import Prediction

__all__ = ("EventStream",)


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    final: RunFinished | None = None
    error: BaseException | None = None


class EventStream:
    """The events of one run, in the order they happened (see the module docstring).

    Args:
        run: Starts the run (called once, in the stream's task, on first use).
        tokens: Ask LMs that can stream for tokens as they are written.
    """

    def __init__(self, run: Callable[[], Awaitable[Prediction]], *, tokens: bool = True) -> None:
        self._run = run
        self._tokens = tokens
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drive())
        item = await self._queue.get()
        if not isinstance(item, _End):
            return item
        self._done = True
        if item.error is not None:
            raise item.error
        assert item.final is not None
        return item.final

    async def _drive(self) -> None:
        end = _End(error=RuntimeError("the run was cancelled before it finished"))
        try:
            with events.listening(self._queue.put_nowait, tokens=self._tokens):
                prediction = await self._run()
            end = _End(final=RunFinished(outputs=dict(prediction), prediction=prediction))
        except Exception as exc:
            end = _End(error=exc)
        finally:
            self._queue.put_nowait(end)

    async def aclose(self) -> None:
        """Stop the run if it still goes; the iteration ends."""
        self._done = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # the run's cancellation stays its own, not ours

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        task = self._task
        if task is not None and not task.done():
            try:  # abandoned without aclose(): nobody reads what the run would report
                task.cancel()
            except RuntimeError:  # its event loop is closed already: nothing runs it
                pass
