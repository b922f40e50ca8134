"""Type checks of field values: a lenient static one per edge, and the run-time one.

**When a graph is wired** (:func:`compatible`), values crossing an edge are
often LM text that converts at run time, so this check only rejects what is
*clearly* wrong: a scalar where a list or mapping is expected, a list where a
mapping is expected, unrelated pydantic models. Anything unknown (``Any``, type
variables, custom classes) passes.

**When a value arrives**, it is converted by
:func:`rhizome.engine.call.values.convert` (the same rule as a predictor's
inputs); :func:`needs_conversion` says which edges need it.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pydantic

__all__ = ("compatible", "needs_conversion")


_SCALARS = (str, int, float, bool, bytes, type(None))


def compatible(src: Any, dst: Any) -> bool:
    """False only when values of type ``src`` clearly cannot be used as ``dst``."""
    if _is_union(dst):
        return any(compatible(src, d) for d in typing.get_args(dst))
    if _is_union(src):
        return any(compatible(s, dst) for s in typing.get_args(src))
    src_kind, dst_kind = _kind(src), _kind(dst)
    if src_kind is None or dst_kind is None:
        return True
    if src_kind != dst_kind:
        return False
    if src_kind == "model" and _is_model(src) and _is_model(dst):
        return issubclass(src, dst) or issubclass(dst, src)
    return _args_compatible(src, dst)


def needs_conversion(src: Any, dst: Any) -> bool:
    """True when a value declared as ``src`` must be converted to be a ``dst``.

    The conversion is :func:`rhizome.engine.call.values.convert`.

    Not when the types are the same, when ``dst`` is ``Any``, or when ``dst`` is
    a union naming ``src`` (``str`` into ``str | None``).
    """
    if dst is Any or src == dst:
        return False
    return not (_is_union(dst) and src in typing.get_args(dst))


def _is_union(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin is typing.Union or origin is types.UnionType


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _kind(annotation: Any) -> str | None:
    """Scalar / sequence / mapping / model, or None when unknown."""
    origin = typing.get_origin(annotation) or annotation
    if origin is Literal:
        return "scalar"
    if not isinstance(origin, type):
        return None
    if issubclass(origin, _SCALARS) or issubclass(origin, enum.Enum):
        return "scalar"
    if _is_model(origin) or typing.is_typeddict(origin):
        return "model"
    if issubclass(origin, Mapping):
        return "model"
    if issubclass(origin, Sequence | set | frozenset):
        return "sequence"
    return None


def _args_compatible(src: Any, dst: Any) -> bool:
    """Element types of two containers of the same kind (the item or value type)."""
    if typing.get_origin(src) is Literal or typing.get_origin(dst) is Literal:
        return True
    src_item, dst_item = _item(src), _item(dst)
    if src_item is None or dst_item is None:
        return True
    return compatible(src_item, dst_item)


def _item(annotation: Any) -> Any:
    """The item type of a list/set/tuple, the value type of a dict, else None."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[-1] if args else None
