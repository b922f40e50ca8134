"""Ambient run settings: the default LM and run options, scoped by a context manager.

There are no module-level mutable settings. ``with rhizome.context(lm=lm):``
sets a private ``ContextVar`` for the block (and for tasks started inside it);
``graph.run(..., lm=lm)`` does the same for one run. Nodes bound to their own
LM ignore the default.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rhizome.engine.errors import ConfigError

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("RunSettings", "context", "pop_settings", "push_lm", "resolve_lm", "settings")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Settings in force for a run.

    Attributes:
        lm: The default LM for nodes not bound to one.
        sample: Sample index passed to every LM call; raise it for fresh samples
            instead of cached replies (bootstrapping rounds do).
        node_timeout: Seconds a node may run before it fails, or None.
    """

    lm: LM | None = None
    sample: int = 0
    node_timeout: float | None = None


# RunSettings is frozen, so sharing one default instance is safe.
_SETTINGS: contextvars.ContextVar[RunSettings] = contextvars.ContextVar(
    "rhizome_settings",
    default=RunSettings(),  # noqa: B039
)


def settings() -> RunSettings:
    """The settings in force in this task."""
    return _SETTINGS.get()


_UNSET = object()


@contextlib.contextmanager
def context(
    *,
    lm: LM | object | None = _UNSET,
    sample: int | object = _UNSET,
    node_timeout: float | object | None = _UNSET,
) -> Iterator[RunSettings]:
    """Override run settings for the block; unspecified settings are inherited.

    Example:
        >>> with rhizome.context(lm=my_lm):  # doctest: +SKIP
        ...     graph(question="...")
    """
    current = _SETTINGS.get()
    changes = {
        k: v
        for k, v in (("lm", lm), ("sample", sample), ("node_timeout", node_timeout))
        if v is not _UNSET
    }
    token = _SETTINGS.set(dataclasses.replace(current, **changes))  # type: ignore[arg-type]
    try:
        yield _SETTINGS.get()
    finally:
        _SETTINGS.reset(token)


def push_lm(lm: LM | None) -> contextvars.Token[RunSettings] | None:
    """Make ``lm`` the default LM until :func:`pop_settings`; None when nothing changed.

    The per-run form of ``context(lm=...)``, without a context manager's cost.
    """
    current = _SETTINGS.get()
    if lm is None or current.lm is lm:
        return None
    changed = RunSettings(lm=lm, sample=current.sample, node_timeout=current.node_timeout)
    return _SETTINGS.set(changed)


def pop_settings(token: contextvars.Token[RunSettings] | None) -> None:
    """Undo :func:`push_lm` (a None token changed nothing)."""
    if token is not None:
        _SETTINGS.reset(token)


def resolve_lm(bound: LM | None, *, node: str = "?") -> LM:
    """The LM a node should use: its own if bound, else the ambient default."""
    if bound is not None:
        return bound
    lm = _SETTINGS.get().lm
    if lm is None:
        raise ConfigError(
            f"node {node!r} has no LM: pass lm=... to graph.run(), wrap the call in "
            "`with rhizome.context(lm=...)`, or bind one to the node with lm=..."
        )
    return lm
