"""Reading and writing field values as text, for the adapters.

Adapters find each output field's raw text in a reply (between tags, or as a
key of a JSON object); this module turns that raw text or JSON value into a
value of the field's type, or raises ``ValueError`` saying what was wrong.
Coercion is lenient only where the meaning is unambiguous: ``"42"`` is an int,
``"Yes"`` is ``True``, ``"POSITIVE"`` matches ``Literal["positive"]``. Anything
else fails, so a caller never receives a silently wrong value.

It also writes values back as text (for demos and inputs) and describes types
in words for the prompt.
"""

from __future__ import annotations

import enum
import functools
import json
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pydantic

from rhizome.engine.call.signature import Field, enum_values, is_structured, type_name
from rhizome.engine.errors import ParseError
from rhizome.engine.trace import jsonable

__all__ = (
    "coerce_json",
    "coerce_text",
    "describe_type",
    "extract_json_object",
    "extract_tagged",
    "format_input",
    "format_value",
    "is_optional",
    "json_schema",
    "match_choice",
    "parse_json",
    "parse_tagged",
    "split_optional",
    "strip_fence",
)


_NULLS = frozenset({"", "null", "none"})
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*)$")
_MAX_JSON_STARTS = 64


# ---------------------------------------------------------------- types


def split_optional(annotation: Any) -> tuple[Any, bool]:
    """Split ``X | None`` into ``(X, True)``; other types give ``(annotation, False)``."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation, False
    args = typing.get_args(annotation)
    rest = tuple(a for a in args if a is not type(None))
    if len(rest) == len(args):
        return annotation, False
    return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007


def _accepts_text(annotation: Any) -> bool:
    """True when a plain string is already a valid value (str, Any, unions with str)."""
    if annotation is str or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in typing.get_args(annotation)
    return False


def describe_type(annotation: Any) -> str:
    """Words telling the model how to write a value of ``annotation``."""
    inner, nullable = split_optional(annotation)
    text = _describe_inner(inner)
    return f"{text}, or null" if nullable else text


def _describe_inner(annotation: Any) -> str:
    choices = enum_values(annotation)
    if choices is not None:
        return "exactly one of: " + ", ".join(str(c) for c in choices)
    simple = {str: "plain text", int: "an integer", float: "a number", bool: "true or false"}
    if annotation in simple:
        return simple[annotation]
    if annotation is Any:
        return "any text"
    text = f"JSON of type {type_name(annotation)}"
    schema = json_schema(annotation)
    if "properties" in schema or "$defs" in schema:
        text += " matching the JSON schema " + json.dumps(schema, separators=(",", ":"))
    return text


@functools.lru_cache(maxsize=256)
def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema pydantic generates for ``annotation`` (cached per type)."""
    try:
        return pydantic.TypeAdapter(annotation).json_schema()
    except (pydantic.PydanticUserError, TypeError):
        return {}


# ---------------------------------------------------------------- writing


def format_value(value: Any) -> str:
    """Write a field value as prompt text: strings as-is, structures as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return format_value(value.value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(jsonable(value), ensure_ascii=False)


def format_input(value: Any) -> str:
    """Write an input value as prompt text; lists of passages become numbered lines.

    Small models read ``[1] first passage`` lines far better than a JSON array,
    and inputs are never parsed back, so readability wins here.
    """
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return "\n".join(f"[{i}] {v}" for i, v in enumerate(value, 1))
    return format_value(value)


# ---------------------------------------------------------------- reading text


def coerce_text(field: Field, text: str) -> Any:
    """Turn the raw text written for ``field`` into a validated value.

    Raises:
        ValueError: The text is not a value of the field's type (the message says why).
    """
    return field.validate(_from_text(field.annotation, text.strip()))


def _from_text(annotation: Any, text: str) -> Any:
    if _accepts_text(annotation):
        return text
    inner, nullable = split_optional(annotation)
    if nullable and _clean(text).lower() in _NULLS:
        return None
    choices = enum_values(inner)
    if choices is not None:
        return match_choice(inner, choices, text)
    if inner is bool:
        return _parse_bool(text)
    if inner is int or inner is float:
        return _parse_number(inner, text)
    if is_structured(inner):
        return _parse_structured(inner, text)
    return _parse_other(text)


def _clean(text: str) -> str:
    """Strip what models wrap short answers in: quotes, backticks, bold, a final period."""
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`*_":
        text = text[1:-1].strip()
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


def _parse_bool(text: str) -> bool:
    word = _clean(text).lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {_preview(text)}")


def _parse_number(kind: type, text: str) -> Any:
    word = _clean(text)
    if _THOUSANDS.match(word):
        word = word.replace(",", "")
    try:
        return pydantic.TypeAdapter(kind).validate_python(word)
    except pydantic.ValidationError:
        wanted = "an integer" if kind is int else "a number"
        raise ValueError(f"expected {wanted}, got {_preview(text)}") from None


def _parse_structured(annotation: Any, text: str) -> Any:
    body = strip_fence(text)
    try:
        return json.loads(body)
    except ValueError as exc:
        items = _bullets(annotation, body)
        if items is not None:
            return items
        raise ValueError(
            f"expected JSON of type {type_name(annotation)}, got {_preview(text)} ({exc})"
        ) from None


def _bullets(annotation: Any, text: str) -> list[str] | None:
    """Items of a bulleted or numbered list written for a ``list[scalar]`` field."""
    if typing.get_origin(annotation) is not list:
        return None
    (item,) = typing.get_args(annotation) or (Any,)
    if item not in (str, int, float, Any):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    matches = [_BULLET.match(line) for line in lines]
    if not lines or not all(matches):
        return None
    return [m.group(1).strip() for m in matches if m]


def _parse_other(text: str) -> Any:
    """Values of unions and other types: JSON when it reads as JSON, else the text."""
    try:
        return json.loads(strip_fence(text))
    except ValueError:
        return text


def strip_fence(text: str) -> str:
    """The body of a Markdown code fence around ``text``, or ``text`` unchanged."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def match_choice(annotation: Any, choices: Sequence[Any], raw: Any) -> Any:
    """The allowed value ``raw`` names: exactly, or ignoring case when that is unambiguous."""
    for choice in choices:
        if type(choice) is type(raw) and choice == raw:
            return choice
    keys = {str(raw).strip().lower(), _clean(str(raw)).lower()}
    hits = {repr(c): c for c in choices if str(c).lower() in keys}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        hits.update({repr(m.value): m.value for m in annotation if m.name.lower() in keys})
    if len(hits) == 1:
        return next(iter(hits.values()))
    allowed = ", ".join(str(c) for c in choices)
    raise ValueError(f"expected exactly one of: {allowed}; got {_preview(str(raw))}")


def _preview(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# ---------------------------------------------------------------- reading JSON


def coerce_json(field: Field, value: Any) -> Any:
    """Turn the JSON value given for ``field`` into a validated value.

    Strings are read like text (``"42"`` for an int field); numbers given for
    a text field become their decimal text; booleans never pass as numbers.

    Raises:
        ValueError: The value is not of the field's type.
    """
    annotation = field.annotation
    if annotation is str and type(value) is str:  # the common case, without the type walk
        return field.validate(value)
    inner, nullable = split_optional(annotation)
    if value is None and nullable:
        return field.validate(None)
    if isinstance(value, str) and not _accepts_text(annotation):
        return coerce_text(field, value)
    if inner is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    choices = enum_values(inner)
    if choices is not None:
        value = match_choice(inner, choices, value)
    if inner in (int, float) and isinstance(value, bool):
        raise ValueError(f"expected {_describe_inner(inner)}, got the boolean {value}")
    return field.validate(value)


def extract_json_object(text: str, keys: Sequence[str]) -> dict[str, Any]:
    """The JSON object in a reply: the whole text, or the first object inside it.

    Code fences and prose around the object are ignored. When several objects
    appear, the first one holding any of ``keys`` wins.

    Raises:
        ValueError: No JSON object could be read from the text.
    """
    body = strip_fence(text)
    try:
        whole = json.loads(body)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return whole
    found = _embedded_objects(text)
    for obj in found:
        if any(k in obj for k in keys):
            return obj
    if found:
        return found[0]
    raise ValueError(f"expected a JSON object, got {_preview(text)}")


def _embedded_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    start, tries = text.find("{"), 0
    while start != -1 and tries < _MAX_JSON_STARTS:
        tries += 1
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        start = text.find("{", end)
    return found


# ---------------------------------------------------------------- reading tags


@functools.lru_cache(maxsize=1024)
def _tag_patterns(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    opening = re.compile(rf"<\s*{re.escape(name)}\s*>", re.IGNORECASE)
    closing = re.compile(rf"<\s*/\s*{re.escape(name)}\s*>", re.IGNORECASE)
    return opening, closing


def extract_tagged(
    text: str, names: Sequence[str], *, optional: Collection[str] = ()
) -> dict[str, str]:
    """The text between ``<name>`` and ``</name>`` for each name, read in order.

    Each section is searched after the previous one first (so prose that
    mentions a later tag inside an earlier section does no harm), then from
    the start, to tolerate fields written out of order. A name in
    ``optional`` whose tag never appears is left out of the result; one that
    is opened but never closed is still an error (the reply was cut short).

    Raises:
        KeyError: A tag is missing or never closed; ``args[0]`` is the field
            name and ``args[1]`` the reason.
    """
    found: dict[str, str] = {}
    cursor = 0
    for name in names:
        span = _span(text, name, cursor) or _span(text, name, 0)
        if span is None:
            if name in optional and not _tag_patterns(name)[0].search(text):
                continue
            raise KeyError(name, _missing_reason(text, name))
        start, end, cursor = span
        found[name] = text[start:end].strip()
    return found


def _span(text: str, name: str, pos: int) -> tuple[int, int, int] | None:
    """``(start, end, after)`` of the first complete section at or after ``pos``."""
    opening, closing = _tag_patterns(name)
    head = opening.search(text, pos)
    tail = closing.search(text, head.end()) if head else None
    return (head.end(), tail.start(), tail.end()) if head and tail else None


def _missing_reason(text: str, name: str) -> str:
    if _tag_patterns(name)[0].search(text):
        return f"<{name}> is never closed with </{name}>"
    return f"the reply has no <{name}> section"


# ---------------------------------------------------------------- whole replies


def parse_tagged(fields: Mapping[str, Field], text: str) -> dict[str, Any]:
    """Typed values of ``fields`` from a reply with one tagged section per field.

    An optional field (``X | None``) whose section the reply leaves out is ``None``.

    Raises:
        ParseError: A required section is missing or a section holds a bad
            value; ``field`` names it.
    """
    names = list(fields)
    try:
        sections = extract_tagged(text, names)
    except KeyError:
        # Only now pay for the type walk: a section is missing, and may be optional.
        try:
            sections = extract_tagged(text, names, optional=_optional_names(fields))
        except KeyError as exc:
            name, reason = exc.args
            message = f"field {name!r}: {reason}; write it as <{name}>...</{name}>"
            raise ParseError(message, raw=text, field=name) from None
    return {
        name: _coerced(f, text, coerce_text, sections[name]) if name in sections else None
        for name, f in fields.items()
    }


def parse_json(fields: Mapping[str, Field], text: str) -> dict[str, Any]:
    """Typed values of ``fields`` from a reply holding one JSON object.

    Raises:
        ParseError: No object, a missing key or a bad value; ``field`` names the field.
    """
    try:
        obj = extract_json_object(text, list(fields))
    except (ValueError, RecursionError) as exc:
        raise ParseError(_reason(exc), raw=text, field=None) from None
    values = {}
    for name, f in fields.items():
        key = _find_key(obj, name)
        if key is not None:
            values[name] = _coerced(f, text, coerce_json, obj[key])
        elif is_optional(f.annotation):
            values[name] = None
        else:
            keys = ", ".join(map(str, obj)) or "none"
            message = (
                f"field {name!r} is missing from the JSON object (its keys: {keys}); "
                f"add the key {name!r}"
            )
            raise ParseError(message, raw=text, field=name)
    return values


def is_optional(annotation: Any) -> bool:
    """True when ``annotation`` admits ``None`` (``X | None``): a reply may leave it out."""
    return split_optional(annotation)[1]


def _optional_names(fields: Mapping[str, Field]) -> frozenset[str]:
    return frozenset(name for name, f in fields.items() if is_optional(f.annotation))


def _coerced(field: Field, raw: str, coerce: Callable[[Field, Any], Any], value: Any) -> Any:
    """``coerce(field, value)`` with failures turned into a ParseError naming the field."""
    try:
        return coerce(field, value)
    except (ValueError, TypeError, RecursionError) as exc:
        message = f"field {field.name!r}: {_reason(exc)}"
        raise ParseError(message, raw=raw, field=field.name) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        return f"expected {exc.title}; " + "; ".join(parts)
    return str(exc) or type(exc).__name__


def _find_key(obj: Mapping[str, Any], name: str) -> str | None:
    if name in obj:
        return name
    folded = [k for k in obj if isinstance(k, str) and k.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None
