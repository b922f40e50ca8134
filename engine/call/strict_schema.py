"""JSON schemas that structured-output strict mode accepts, or an honest ``strict: false``.

OpenAI's strict structured outputs (and servers that copy it: vLLM, LiteLLM,
Azure) accept a subset of JSON Schema and reject the rest with a 400:

- the root is an object schema, not ``anyOf``;
- every object lists every property in ``required`` and sets
  ``additionalProperties: false``, nested ones and ``$defs`` included; a field
  that may be absent is written as required and nullable (a union with null);
- only these keywords: ``type``, ``properties``, ``required``,
  ``additionalProperties``, ``items``, ``enum``, ``const``, ``anyOf``, ``$ref``,
  ``$defs``, ``description``; for strings ``pattern`` and ``format`` (a fixed
  list of formats); for numbers ``minimum``, ``maximum``, ``exclusiveMinimum``,
  ``exclusiveMaximum``, ``multipleOf``; for arrays ``minItems``, ``maxItems``;
- at most 10 levels of nesting.

:func:`strict_schema` rewrites a pydantic-made schema to those rules where the
meaning survives: ``title`` and ``default`` are dropped (informative only), a
one-element ``allOf`` is unwrapped, a ``$ref`` with a description becomes a
one-branch ``anyOf``, and a field with a default becomes required (the model
always writes it; ``zip: str | None = None`` may still be null). Where a type
cannot be said under the rules — a ``dict`` (``additionalProperties`` as a
schema), a tuple (``prefixItems``), string length bounds, ``Any`` — it returns
the schema with ``strict`` False instead: the server then treats the schema as a hint,
and rhizome's parser still checks every reply against the field types.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ("MAX_DEPTH", "NotStrict", "strict_schema", "why_not_strict")

MAX_DEPTH = 10
"""Nesting levels strict mode allows."""

_COMMON = frozenset(
    {"type", "description", "enum", "const", "anyOf", "$ref", "$defs", "title", "default"}
)
_BY_TYPE: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"pattern", "format"}),
    "number": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "integer": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "boolean": frozenset(),
    "null": frozenset(),
}
_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
_DROPPED = ("title", "default")


class NotStrict(ValueError):
    """A schema strict mode cannot express; the message says which part and why."""


def strict_schema(schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``schema`` rewritten to strict mode's rules, and whether that was possible.

    Returns:
        ``(rewritten, True)`` when every part could be expressed, else a copy of
        ``schema`` with only ``title``/``default`` dropped and False: send it
        with ``"strict": false``.
    """
    try:
        return _Rewriter(schema).root(), True
    except NotStrict:
        return _without_noise(copy.deepcopy(dict(schema))), False


def why_not_strict(schema: Mapping[str, Any]) -> str | None:
    """The reason :func:`strict_schema` gives up on ``schema``, or None when it does not."""
    try:
        _Rewriter(schema).root()
    except NotStrict as exc:
        return str(exc)
    return None


class _Rewriter:
    """One rewrite of one schema: walks it once, resolving ``$defs`` by name."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._schema = schema
        self._defs: Mapping[str, Any] = schema.get("$defs", {})

    def root(self) -> dict[str, Any]:
        if "anyOf" in self._schema or self._schema.get("type") != "object":
            raise NotStrict("the root must be an object schema")
        out = self._node({k: v for k, v in self._schema.items() if k != "$defs"}, "$", 1)
        if self._defs:
            out["$defs"] = {
                name: self._node(sub, f"$defs.{name}", 2) for name, sub in self._defs.items()
            }
        return out

    def _node(self, node: Mapping[str, Any], where: str, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise NotStrict(f"{where}: nested deeper than {MAX_DEPTH} levels")
        node = _unwrap_all_of(node, where)
        if "$ref" in node:
            return self._ref(node, where)
        if "anyOf" in node:
            branches = [self._node(b, f"{where}.anyOf", depth) for b in node["anyOf"]]
            out: dict[str, Any] = {"anyOf": branches}
            _copy_description(node, out)
            return out
        types = node.get("type")
        names = [types] if isinstance(types, str) else list(types or [])
        if not names and "enum" not in node and "const" not in node:
            raise NotStrict(f"{where}: a value of any type (no 'type') cannot be strict")
        allowed = set(_COMMON)
        for name in names:
            if name not in _BY_TYPE:
                raise NotStrict(f"{where}: unknown type {name!r}")
            allowed |= _BY_TYPE[name]
        extra = sorted(set(node) - allowed)
        if extra:
            raise NotStrict(
                f"{where}: keyword(s) {', '.join(extra)} are not allowed in strict mode"
            )
        if "format" in node and node["format"] not in _FORMATS:
            raise NotStrict(f"{where}: format {node['format']!r} is not supported in strict mode")
        out = {k: v for k, v in node.items() if k not in _DROPPED}
        if "object" in names:
            self._object(node, out, where, depth)
        if "array" in names and "items" in node:
            out["items"] = self._node(node["items"], f"{where}[]", depth + 1)
        return out

    def _object(self, node: Mapping[str, Any], out: dict[str, Any], where: str, depth: int) -> None:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            raise NotStrict(f"{where}: an object with open keys (a dict) cannot be strict")
        properties: Mapping[str, Any] = node.get("properties", {})
        # Every field becomes required: one with a default is simply always written
        # (``zip: str | None = None`` can still be null, ``tags: list[str] = []`` empty).
        rewritten = {
            name: self._node(sub, f"{where}.{name}", depth + 1) for name, sub in properties.items()
        }
        out["properties"] = rewritten
        out["required"] = list(properties)
        out["additionalProperties"] = False

    def _ref(self, node: Mapping[str, Any], where: str) -> dict[str, Any]:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            raise NotStrict(f"{where}: only references into $defs are supported, got {ref!r}")
        if ref.removeprefix("#/$defs/") not in self._defs:
            raise NotStrict(f"{where}: {ref!r} names no definition")
        extra = sorted(set(node) - {"$ref", "description", *_DROPPED})
        if extra:
            raise NotStrict(f"{where}: keyword(s) {', '.join(extra)} beside $ref")
        if "description" in node:  # strict mode wants $ref alone: keep the text on a union
            return {"anyOf": [{"$ref": ref}], "description": node["description"]}
        return {"$ref": ref}


def _unwrap_all_of(node: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if "allOf" not in node:
        return node
    parts = node["allOf"]
    if len(parts) != 1:
        raise NotStrict(f"{where}: allOf with {len(parts)} parts cannot be strict")
    merged = {k: v for k, v in node.items() if k != "allOf"}
    for key, value in parts[0].items():
        merged.setdefault(key, value)
    return merged


def _copy_description(node: Mapping[str, Any], out: dict[str, Any]) -> None:
    if "description" in node:
        out["description"] = node["description"]


def _without_noise(node: Any) -> Any:
    """``node`` with ``title`` dropped everywhere (a schema's other keys kept as they are)."""
    if isinstance(node, dict):
        return {
            k: _without_noise(v)
            for k, v in node.items()
            if k != "title" or not isinstance(v, str)  # a property named "title" is a dict
        }
    if isinstance(node, list):
        return [_without_noise(v) for v in node]
    return node
