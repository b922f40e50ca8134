"""Type checks of field values: a lenient static one per edge, and the run-time one.

**When a graph is wired** (:func:`compatible`), values crossing an edge are
often LM text that converts at run time, so this check only rejects what is
*clearly* wrong: a scalar where a list or mapping is expected, a list where a
mapping is expected, unrelated pydantic models. Anything unknown (``Any``, type
variables, custom classes) passes.

**When a value arrives** (:func:`convert`), it is validated against the
declared type with pydantic in lax mode, and the converted value is what the
node receives. The rule, for predictor inputs and for every edge whose two
ends are declared with different types:

- what lax mode converts is converted: ``"3"`` for an ``int`` becomes ``3``,
  ``3`` for a ``float`` becomes ``3.0``, a tuple for a ``list`` becomes a list,
  a dict for a pydantic model becomes the model;
- numbers and booleans given for text become their text (``3`` -> ``"3"``,
  ``True`` -> ``"true"``), the form they would be written in a prompt anyway;
- anything else is an error naming the field, the expected type and the
  type received: ``"three"`` is not an ``int``, ``3.5`` is not an ``int``, a
  list is not ``str``, ``None`` is not ``str`` (declare ``str | None``);
- ``Any``, and types pydantic cannot describe, accept any value; custom
  classes are checked with ``isinstance``.

So a ``str`` output may feed an ``int`` input (an LM answer such as ``"42"``),
and a reply that does not read as a number fails at that edge, clearly, instead
of reaching the node as a string.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pydantic

__all__ = ("compatible", "convert", "needs_conversion", "value_adapter")


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
    """True when a value declared as ``src`` must go through :func:`convert` to be a ``dst``.

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


# ---------------------------------------------------------------- values at run time

_LENIENT = pydantic.ConfigDict(coerce_numbers_to_str=True, arbitrary_types_allowed=True)


def convert(annotation: Any, value: Any) -> Any:
    """``value`` validated as ``annotation`` and converted as the module docstring says.

    Raises:
        TypeError: ``value`` is not (and does not convert to) a value of
            ``annotation``; the message (``"got int 5: Input should be a valid
            list"``) names the value's type and says why.
    """
    if annotation is Any:
        return value
    if annotation is str and isinstance(value, bool):  # pydantic refuses; a prompt says true
        return "true" if value else "false"
    adapter = value_adapter(annotation)
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise TypeError(f"got {type(value).__name__} {_preview(value)}: {_reason(exc)}") from None


def value_adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    """The lenient validator of ``annotation`` (built once per type), or None if there is none."""
    try:
        return _cached_adapter(annotation)
    except TypeError:  # an unhashable annotation (Annotated with a dict ...): build afresh
        return _build_adapter(annotation)


@functools.lru_cache(maxsize=512)
def _cached_adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    return _build_adapter(annotation)


def _build_adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    try:
        return pydantic.TypeAdapter(annotation, config=_LENIENT)
    except pydantic.PydanticUserError as exc:
        if exc.code != "type-adapter-config-unused":
            return None
    except (TypeError, NameError):
        return None
    try:  # models, dataclasses and TypedDicts carry their own config
        return pydantic.TypeAdapter(annotation)
    except (pydantic.PydanticUserError, TypeError, NameError):
        return None


def _reason(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
