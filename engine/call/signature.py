"""Typed signatures: what an LM call takes and what it must give back.

A signature is written as a string, ``"context: list[str], question -> answer: int"``
(types are optional and default to ``str``), or as a class whose docstring is the
instruction and whose annotated attributes are fields::

    class Answer(Signature):
        \"\"\"Answer the question from the context.\"\"\"

        context: list[str] = InputField(desc="passages that may help")
        question: str = InputField()
        answer: int = OutputField(desc="a whole number")

Type strings are read by a small parser, never ``eval``: it knows the builtin
scalars, ``list[...]``, ``dict[...]``, ``Literal[...]``, ``Optional[...]``, the
input types ``History`` and ``Image`` (:mod:`rhizome.engine.call.media`) and any
names passed in ``types=``.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import re
import typing
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import pydantic

from rhizome.engine.call.media import History, Image
from rhizome.engine.call.values import convert
from rhizome.engine.errors import SignatureError

__all__ = (
    "Field",
    "InputField",
    "OutputField",
    "Signature",
    "enum_values",
    "is_scalar_text",
    "is_structured",
    "parse_type",
    "type_name",
)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BUILTIN_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "Any": Any,
    "History": History,
    "Image": Image,
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One named input or output of a signature.

    Attributes:
        name: The field name, a Python identifier.
        annotation: The Python type the value must have.
        desc: A description shown to the model.
        is_input: True for inputs, False for outputs.
    """

    name: str
    annotation: Any = str
    desc: str = ""
    is_input: bool = True

    @property
    def type_name(self) -> str:
        """A readable name of the field's type, e.g. ``list[str]``."""
        return type_name(self.annotation)

    @functools.cached_property
    def adapter(self) -> pydantic.TypeAdapter[Any]:
        """The pydantic adapter that validates values of this field (built once)."""
        return pydantic.TypeAdapter(self.annotation)

    def validate(self, value: Any) -> Any:
        """Validate ``value`` into this field's type or raise ``pydantic.ValidationError``."""
        if self.annotation is Any:
            return value
        return self.adapter.validate_python(value)

    def convert(self, value: Any) -> Any:
        """``value`` checked against this field's type and converted the lenient way.

        ``"3"`` becomes ``3`` for an ``int`` field, a tuple a list, a number its
        text for a ``str`` field; the rule is in :mod:`rhizome.engine.graphs.typecheck`.

        Raises:
            TypeError: The value is not of the field's type; the message says why.
        """
        return convert(self.annotation, value)


class _FieldSpec:
    """Marker returned by :func:`InputField` / :func:`OutputField` in class signatures."""

    def __init__(self, *, is_input: bool, desc: str) -> None:
        self.is_input = is_input
        self.desc = desc


def InputField(*, desc: str = "") -> Any:
    """Declare an input field in a class-form signature."""
    return _FieldSpec(is_input=True, desc=desc)


def OutputField(*, desc: str = "") -> Any:
    """Declare an output field in a class-form signature."""
    return _FieldSpec(is_input=False, desc=desc)


class Signature:
    """Inputs, outputs and an instruction for one LM call.

    Build one from a string with ``Signature("question -> answer")``, or subclass
    it with ``InputField``/``OutputField`` attributes. Instances are immutable;
    the ``with_*`` methods return changed copies.
    """

    _class_fields: ClassVar[tuple[Field, ...]] = ()
    _class_instruction: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=False)
        fields: list[Field] = []
        for name, value in list(vars(cls).items()):
            if isinstance(value, _FieldSpec):
                if name not in hints:
                    raise SignatureError(
                        f"field {name!r} of {cls.__name__} needs a type annotation"
                    )
                fields.append(Field(name, hints[name], value.desc, value.is_input))
        cls._class_fields = tuple(fields)
        cls._class_instruction = _clean_doc(cls.__doc__)

    def __init__(
        self,
        spec: str | None = None,
        instruction: str | None = None,
        *,
        types: Mapping[str, Any] | None = None,
        fields: Iterable[Field] | None = None,
    ) -> None:
        if fields is not None:
            parsed = tuple(fields)
        elif spec is not None:
            parsed = _parse_spec(spec, dict(types or {}))
        else:
            parsed = type(self)._class_fields
        if instruction is None:
            instruction = type(self)._class_instruction
        self._fields: tuple[Field, ...] = parsed
        self._instruction: str = instruction or _default_instruction(parsed)
        _check_fields(parsed, spec)
        # Immutable, so the views and the hash are built once: every LM call reads them.
        self._inputs = MappingProxyType({f.name: f for f in parsed if f.is_input})
        self._outputs = MappingProxyType({f.name: f for f in parsed if not f.is_input})
        self._hash = hash((parsed, self._instruction))

    @classmethod
    def coerce(cls, value: str | Signature | type[Signature]) -> Signature:
        """Turn a string, a signature class or an instance into a signature instance."""
        if isinstance(value, Signature):
            return value
        if isinstance(value, type) and issubclass(value, Signature):
            return value()
        if isinstance(value, str):
            return cls(value)
        raise SignatureError(
            f"cannot build a signature from {type(value).__name__}; pass a string such as "
            "'question -> answer' or a Signature subclass"
        )

    @property
    def instruction(self) -> str:
        """What the LM is asked to do (change it with :meth:`with_instruction`)."""
        return self._instruction

    @property
    def fields(self) -> tuple[Field, ...]:
        """All fields, inputs first, in declaration order."""
        return self._fields

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The input fields by name (read-only)."""
        return self._inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The output fields by name (read-only)."""
        return self._outputs

    def with_instruction(self, instruction: str) -> Signature:
        """Return a copy with a different instruction."""
        return Signature(fields=self._fields, instruction=instruction)

    def prepend_output(self, name: str, annotation: Any = str, desc: str = "") -> Signature:
        """Return a copy with a new output field before the existing outputs."""
        new = Field(name, annotation, desc, is_input=False)
        ins = [f for f in self._fields if f.is_input]
        outs = [f for f in self._fields if not f.is_input]
        return Signature(fields=[*ins, new, *outs], instruction=self.instruction)

    def append_input(self, name: str, annotation: Any = str, desc: str = "") -> Signature:
        """Return a copy with a new input field after the existing inputs."""
        new = Field(name, annotation, desc, is_input=True)
        ins = [f for f in self._fields if f.is_input]
        outs = [f for f in self._fields if not f.is_input]
        return Signature(fields=[*ins, new, *outs], instruction=self.instruction)

    def spec(self) -> str:
        """The signature as a string, ``"a: int, b -> c: list[str]"``."""

        def part(f: Field) -> str:
            return f.name if f.annotation is str else f"{f.name}: {f.type_name}"

        ins = ", ".join(part(f) for f in self._fields if f.is_input)
        outs = ", ".join(part(f) for f in self._fields if not f.is_input)
        return f"{ins} -> {outs}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return self._fields == other._fields and self.instruction == other.instruction

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Signature({self.spec()!r})"


def type_name(annotation: Any) -> str:
    """Readable name for a type annotation, as it would be written in a signature."""
    if annotation is Any:
        return "Any"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in typing.get_args(annotation)) + "]"
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def is_scalar_text(annotation: Any) -> bool:
    """True when values of the type are plain text (no JSON needed to write them)."""
    return annotation is str or annotation is Any


def is_structured(annotation: Any) -> bool:
    """True for types whose values are written as JSON (lists, dicts, models)."""
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, list | dict | tuple | set):
        return True
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def enum_values(annotation: Any) -> list[Any] | None:
    """The allowed values of a Literal or Enum type, else None."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [m.value for m in annotation]
    return None


def _clean_doc(doc: str | None) -> str:
    if not doc:
        return ""
    import inspect

    return inspect.cleandoc(doc)


def _default_instruction(fields: tuple[Field, ...]) -> str:
    ins = ", ".join(f"`{f.name}`" for f in fields if f.is_input)
    outs = ", ".join(f"`{f.name}`" for f in fields if not f.is_input)
    return f"Given the fields {ins}, produce the fields {outs}."


def _check_fields(fields: tuple[Field, ...], spec: str | None) -> None:
    where = f" in {spec!r}" if spec else ""
    seen: set[str] = set()
    for f in fields:
        if not _IDENT.match(f.name):
            raise SignatureError(f"field name {f.name!r}{where} is not a Python identifier")
        if f.name in seen:
            raise SignatureError(f"field {f.name!r} appears twice{where}")
        seen.add(f.name)
    if not any(not f.is_input for f in fields):
        raise SignatureError(f"a signature needs at least one output field{where}")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` where not nested inside brackets or quotes."""
    parts: list[str] = []
    buf: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts]


def _parse_spec(spec: str, types: dict[str, Any]) -> tuple[Field, ...]:
    if spec.count("->") != 1:
        raise SignatureError(
            f"signature {spec!r} must contain exactly one '->' between inputs and outputs, "
            "e.g. 'context, question -> answer'"
        )
    left, right = spec.split("->")
    fields = [_parse_field(p, True, types, spec) for p in _split_top(left) if p]
    fields += [_parse_field(p, False, types, spec) for p in _split_top(right) if p]
    return tuple(fields)


def _parse_field(text: str, is_input: bool, types: dict[str, Any], spec: str) -> Field:
    name, _, type_text = text.partition(":")
    name = name.strip()
    annotation = parse_type(type_text.strip(), types, spec) if type_text.strip() else str
    return Field(name, annotation, "", is_input)


def parse_type(text: str, types: Mapping[str, Any] | None = None, spec: str = "") -> Any:
    """Parse a type expression such as ``list[dict[str, int]]`` without evaluating code."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise SignatureError(f"cannot read the type {text!r} in {spec or text!r}") from exc
    return _type_from_ast(node, {**_BUILTIN_TYPES, **dict(types or {})}, spec or text)


def _type_from_ast(node: ast.expr, names: dict[str, Any], spec: str) -> Any:
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names))
            raise SignatureError(
                f"unknown type {node.id!r} in {spec!r}; known types: {known} "
                "(pass others with types={...})"
            )
        return names[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _type_from_ast(node.left, names, spec) | _type_from_ast(node.right, names, spec)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return _subscript(node.value.id, node.slice, names, spec)
    raise SignatureError(f"unsupported type expression {ast.unparse(node)!r} in {spec!r}")


def _subscript(head: str, slc: ast.expr, names: dict[str, Any], spec: str) -> Any:
    items = list(slc.elts) if isinstance(slc, ast.Tuple) else [slc]
    if head == "Literal":
        if not all(isinstance(i, ast.Constant) for i in items):
            raise SignatureError(f"Literal[...] takes constants only, in {spec!r}")
        return Literal[tuple(i.value for i in items)]  # type: ignore[attr-defined]
    args = tuple(_type_from_ast(i, names, spec) for i in items)
    if head == "list" and len(args) == 1:
        return list[args[0]]  # type: ignore[valid-type]
    if head == "dict" and len(args) == 2:
        return dict[args[0], args[1]]  # type: ignore[valid-type]
    if head == "Optional" and len(args) == 1:
        return args[0] | None
    if head == "tuple":
        return tuple[args]  # type: ignore[valid-type]
    raise SignatureError(f"unsupported generic {head}[...] in {spec!r}; use list, dict, Literal")
