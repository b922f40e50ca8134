"""The one place Ray is imported: a missing extra says how to install it."""

from __future__ import annotations

from types import ModuleType

from rhizome.engine.errors import RhizomeError

__all__ = ("RayMissingError", "require_ray")

INSTALL = 'pip install "rhizome[ray]"'


class RayMissingError(RhizomeError, ImportError):
    """Ray (the ``rhizome[ray]`` extra) is not installed."""


def require_ray() -> ModuleType:
    """The ``ray`` module, with Ray Data importable.

    Raises:
        RayMissingError: Ray or Ray Data is not installed; the message names the extra.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayMissingError(
            f"running on Ray needs the ray extra: {INSTALL} (missing: {exc.name or exc})"
        ) from None
    return ray
