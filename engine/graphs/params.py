"""Named parameters: the one door through which tunable state is read and written.

Every node declares its tunable slots in
:meth:`~rhizome.engine.graphs.node.Node.parameter_slots`: a predictor's
``instruction``, ``demos``, ``temperature`` and ``lm``; a ``Retrieve`` node's
``k``; whatever a custom node declares. A parameter's name is the node's path
(from :mod:`rhizome.engine.graphs.walk`) and the slot: ``"answer.instruction"``,
``"agent.step.demos"``, ``"hops.search.k"``.

:func:`named_parameters` reads them, :func:`set_parameters` writes them (every
name and value checked before any is set); saving, the structure fingerprint
and every optimizer go through these two.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.client.protocol import LM
from rhizome.engine.errors import GraphError
from rhizome.engine.graphs.walk import join, walk
from rhizome.engine.slots import Slot

# The slot checks moved to rhizome.engine.slots; still importable from here.
from rhizome.engine.slots import count_problem as count_problem
from rhizome.engine.slots import demos_problem as demos_problem
from rhizome.engine.slots import lm_problem as lm_problem
from rhizome.engine.slots import text_problem as text_problem

if TYPE_CHECKING:
    from rhizome.engine.graphs.node import Node

__all__ = (
    "json_parameters",
    "named_parameters",
    "named_slots",
    "set_parameters",
    "unknown",
)


# -- the door -------------------------------------------------------------------


def named_slots(root: Node) -> dict[str, Slot]:
    """Every slot of ``root`` and of everything nested in it, by parameter name."""
    slots: dict[str, Slot] = {}
    for path, node in [("", root), *walk(root)]:
        for slot_name, slot in node.parameter_slots().items():
            name = join(path, slot_name)
            if name in slots and slots[name] is not slot:
                raise GraphError(
                    f"two slots are both named {name!r} ({node.kind} at {path or 'the root'!r}); "
                    "rename one of them in its node's parameter_slots()"
                )
            slots[name] = slot
    return slots


def named_parameters(root: Node) -> dict[str, Any]:
    """``{"<path>.<slot>": value}`` for every slot, in walk order."""
    return {name: slot.get() for name, slot in named_slots(root).items()}


def json_parameters(root: Node, reference: Callable[[LM], str]) -> dict[str, Any]:
    """The parameters as JSON-ready data, each LM replaced by ``reference(lm)``."""
    from rhizome.engine.trace import jsonable

    out: dict[str, Any] = {}
    for name, slot in named_slots(root).items():
        value = slot.get()
        if slot.kind == "lm":
            out[name] = None if value is None else reference(value)
        else:
            out[name] = jsonable(value)
    return out


def set_parameters(root: Node, values: Mapping[str, Any], *, label: str) -> None:
    """Set slots by parameter name; every name and value is checked before any is set.

    Raises:
        GraphError: A name is unknown (with close matches and the valid names)
            or a value is refused by its slot's check.
    """
    slots = named_slots(root)
    changes: list[tuple[Slot, Any]] = []
    for name, value in values.items():
        slot = slots.get(name)
        if slot is None:
            raise unknown(label, name, list(slots))
        problem = slot.check(value)
        if problem is not None:
            raise GraphError(f"parameter {name!r} {problem}")
        changes.append((slot, value))
    for slot, value in changes:
        slot.set(value)


def unknown(label: str, name: str, valid: list[str]) -> GraphError:
    """The error for a parameter name the graph lacks, with close matches."""
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return GraphError(
        f"graph {label!r} has no parameter {name!r}{hint}; "
        f"valid parameters: {', '.join(valid) or 'none (no tunable nodes)'}"
    )
