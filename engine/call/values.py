"""Values at run time: a field's value validated and converted the lenient way.

When a value arrives at a node (a predictor's input, or an edge whose two ends
are declared with different types), :func:`convert` validates it against the
declared type with pydantic in lax mode, and the converted value is what the
node receives:

- what lax mode converts is converted: ``"3"`` for an ``int`` becomes ``3``,
  ``3`` for a ``float`` becomes ``3.0``, a tuple for a ``list`` becomes a list,
  a dict for a pydantic model becomes the model;
- numbers and booleans given for text become their text (``3`` -> ``"3"``,
  ``True`` -> ``"true"``), the form they would be written in a prompt anyway;
- anything else is an error naming the expected type and the type received:
  ``"three"`` is not an ``int``, ``3.5`` is not an ``int``, a list is not
  ``str``, ``None`` is not ``str`` (declare ``str | None``);
- ``Any``, and types pydantic cannot describe, accept any value; custom
  classes are checked with ``isinstance``.

So a ``str`` output may feed an ``int`` input (an LM answer such as ``"42"``),
and a reply that does not read as a number fails at that edge, clearly, instead
of reaching the node as a string. :mod:`rhizome.engine.graphs.typecheck` holds
the static check made when a graph is wired.
"""

from __future__ import annotations

import functools
from typing import Any

import pydantic

__all__ = ("convert", "value_adapter")

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
