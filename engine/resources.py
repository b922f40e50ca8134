"""Resources a run opens on first use and closes when it ends.

Some tools hold a connection: an MCP server started as a subprocess, with a
session over its pipes. Started once per call it would cost a process per tool
call; kept forever it would leak. So a top-level run (``Graph.run``, every run
of ``rhizome serve``) and a whole batch (all its examples together) hold a
*resource scope*: the first call that needs the resource opens it, later calls
of the same run share it, and the run closes it when it ends, whether it
succeeded, failed or was cancelled::

    session = await run_resource(key, lambda: open_session())   # None outside a run

A nested run (a graph run inside a node) shares the enclosing run's scope. The
resource is entered and exited by one owner task of its own, as anyio's cancel
scopes require, so any node task may ask for it. Scopes exist under the
asyncio backend; elsewhere :func:`run_resource` answers None and the caller
opens the resource for the one use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import sniffio

__all__ = ("ResourceScope", "close_scope", "open_scope", "resource_scope", "run_resource")

T = TypeVar("T")
Opener = Callable[[], AbstractAsyncContextManager[Any]]


class _Owner:
    """One task that enters a resource, waits until the scope closes, and exits it."""

    def __init__(self, opener: Opener) -> None:
        self.value: Any = None
        self.error: Exception | None = None
        self._ready = anyio.Event()
        self._closing = anyio.Event()
        self._task = asyncio.get_running_loop().create_task(self._hold(opener))

    async def _hold(self, opener: Opener) -> None:
        try:
            async with opener() as value:
                self.value = value
                self._ready.set()
                await self._closing.wait()
        except Exception as exc:  # recorded for every caller; a close failure is dropped
            if not self._ready.is_set():
                self.error = exc
        finally:
            self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        if self.error is not None:
            raise self.error
        return self.value

    async def close(self) -> None:
        self._closing.set()
        await self._task


class ResourceScope:
    """The resources one run (or batch) opened, by key; closed together by :meth:`aclose`."""

    __slots__ = ("_loop", "_owners")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._owners: dict[Hashable, _Owner] = {}

    def here(self) -> bool:
        """Whether this scope belongs to the running event loop (not one in another thread)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def get(self, key: Hashable, opener: Opener) -> Any:
        """The resource under ``key``, opened with ``opener()`` on first use.

        Raises:
            Exception: What opening the resource raised (for every call of the run).
        """
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(opener)
        return await owner.get()

    async def aclose(self) -> None:
        """Close every resource opened in this scope (shielded from cancellation)."""
        owners, self._owners = list(self._owners.values()), {}
        with anyio.CancelScope(shield=True):
            for owner in owners:
                await owner.close()


_SCOPE: contextvars.ContextVar[ResourceScope | None] = contextvars.ContextVar(
    "rhizome_resource_scope", default=None
)


def open_scope() -> contextvars.Token[ResourceScope | None] | None:
    """Start a scope for a run, unless one of this event loop is already open (then None)."""
    current = _SCOPE.get()
    if current is not None and current.here():
        return None
    if sniffio.current_async_library() != "asyncio":
        return None
    return _SCOPE.set(ResourceScope())


async def close_scope(token: contextvars.Token[ResourceScope | None] | None) -> None:
    """End the scope :func:`open_scope` started, closing what it opened."""
    if token is None:
        return
    scope = _SCOPE.get()
    _SCOPE.reset(token)
    if scope is not None and scope._owners:
        await scope.aclose()


@contextlib.asynccontextmanager
async def resource_scope() -> AsyncIterator[None]:
    """A scope around a block (a batch): its runs share the resources they open."""
    token = open_scope()
    try:
        yield
    finally:
        await close_scope(token)


async def run_resource(
    key: Hashable, opener: Callable[[], AbstractAsyncContextManager[T]]
) -> T | None:
    """The run's resource under ``key`` (opened on first use), or None outside a run's scope."""
    scope = _SCOPE.get()
    if scope is None or not scope.here():
        return None
    value: T = await scope.get(key, opener)
    return value
