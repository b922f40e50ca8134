"""Slots: the tunable values a node declares, and the checks new values must pass.

A node lists its slots in :meth:`~rhizome.engine.graphs.node.Node.parameter_slots`
(a predictor its ``instruction``, ``demos``, ``temperature`` and ``lm``; a
``Retrieve`` node its ``k``); :mod:`rhizome.engine.graphs.params` names them by
path and is the one door through which they are read and written. This module
sits below both the call layer and the graph layer, so predictors and custom
nodes can declare slots without importing the graph machinery.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from rhizome.engine.client.protocol import LM

__all__ = ("Check", "Slot", "count_problem", "demos_problem", "lm_problem", "text_problem")


Check = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tunable value: the attribute it lives in and how a new value is checked.

    Attributes:
        owner: The object holding the value (a predictor, a node).
        attr: The attribute's name on ``owner``.
        check: ``check(value)``: why ``value`` is not acceptable, or None.
        kind: ``"lm"`` for an LM choice (saved as a reference name), else ``"value"``
            (plain JSON data).
    """

    owner: object
    attr: str
    check: Check
    kind: Literal["value", "lm"] = "value"

    def get(self) -> Any:
        """The current value."""
        return getattr(self.owner, self.attr)

    def set(self, value: Any) -> None:
        """Set a value that passed :attr:`check` (demos and other containers are copied)."""
        setattr(self.owner, self.attr, _copied(value))


def _copied(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [dict(v) if isinstance(v, Mapping) else v for v in copy.deepcopy(list(value))]
    return value


# -- checks shared by node kinds ----------------------------------------------


def text_problem(value: Any) -> str | None:
    """Why ``value`` is not an instruction (a string), or None."""
    return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"


def demos_problem(value: Any) -> str | None:
    """Why ``value`` is not a list of demos (one mapping each), or None."""
    if isinstance(value, list | tuple) and all(isinstance(d, Mapping) for d in value):
        return None
    return "must be a list of objects (one per demo)"


def count_problem(value: Any) -> str | None:
    """Why ``value`` is not a whole number >= 1 (a retrieval ``k``), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a whole number >= 1, got {value!r}"
    return None


def lm_problem(value: Any) -> str | None:
    """Why ``value`` is not an LM (or None, for the run's default), or None."""
    if value is None or isinstance(value, LM):
        return None
    return f"must be an LM or None (the run's default), got {type(value).__name__}"
