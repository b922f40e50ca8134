"""Named parameters: the one flat view optimizers use to read and set tunable slots.

A parameter name is ``<predictor path>.<slot>``: ``"answer.instruction"``,
``"agent.step.demos"``, ``"sub.answer.temperature"``. The slots are those of
:data:`rhizome.engine.predictor.SLOTS`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import GraphError
from rhizome.engine.predictor import SLOTS, temperature_problem

if TYPE_CHECKING:
    from rhizome.engine.predictor import Predictor


def named_parameters(predictors: Iterable[tuple[str, Predictor]]) -> dict[str, Any]:
    """``{"<path>.<slot>": value}`` for every slot of every predictor."""
    return {
        f"{path}.{slot}": getattr(predictor, slot)
        for path, predictor in predictors
        for slot in SLOTS
    }


def set_parameters(
    graph: str, predictors: Iterable[tuple[str, Predictor]], values: Mapping[str, Any]
) -> None:
    """Set slots by parameter name; every name and value is checked before any is set."""
    by_path = dict(predictors)
    changes: list[tuple[Predictor, str, Any]] = []
    for name, value in values.items():
        path, _, slot = name.rpartition(".")
        if path not in by_path or slot not in SLOTS:
            raise _unknown(graph, name, by_path)
        changes.append((by_path[path], slot, _checked(name, slot, value)))
    for predictor, slot, value in changes:
        setattr(predictor, slot, value)


def _unknown(graph: str, name: str, by_path: Mapping[str, Predictor]) -> GraphError:
    valid = [f"{p}.{s}" for p in by_path for s in SLOTS]
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return GraphError(
        f"graph {graph!r} has no parameter {name!r}{hint}; "
        f"valid parameters: {', '.join(valid) or 'none (no LM nodes)'}"
    )


def _checked(name: str, slot: str, value: Any) -> Any:
    if slot == "instruction":
        if not isinstance(value, str):
            raise GraphError(f"parameter {name!r} must be a string, got {type(value).__name__}")
        return value
    if slot == "demos":
        if not isinstance(value, list | tuple) or not all(isinstance(d, Mapping) for d in value):
            raise GraphError(f"parameter {name!r} must be a list of dicts (one per demo)")
        return [dict(d) for d in value]
    if slot != "temperature":
        return value
    problem = temperature_problem(value)
    if problem is not None:
        raise GraphError(f"parameter {name!r} {problem}")
    return value
