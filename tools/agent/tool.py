"""Tools an LM can call: the :class:`Tool` base class and the :func:`tool` decorator.

A tool has a ``name``, a ``description`` and a JSON schema of its parameters, and is
called with the arguments an LM sent (a dict, or the JSON text of a tool call)::

    @tool
    def add(a: int, b: int = 0) -> int:
        \"\"\"Add two whole numbers.

Args:
            a: The first number.
            b: The second number.
        \"\"\"
        return a + b

    add.openai_schema()      # the entry for an OpenAI ``tools`` list
    result = await add({"a": 2, "b": 3})
    result.text              # "5"

Arguments are validated with a pydantic model built from the signature. A bad call
raises :class:`ToolArgumentError`, whose message names the argument, says what was
expected and lists the tool's parameters, so an agent can show it to the model and
let it try again. An exception inside the tool is wrapped in :class:`ToolError`
carrying the tool's name. Sync functions run in a worker thread.

Errors (all :class:`~rhizome.engine.errors.RhizomeError`)::

    ToolDefinitionError(TypeError)   a function cannot become a tool (missing annotations...)
    ToolArgumentError(ValueError)    the arguments of a call are invalid
    ToolError(RuntimeError)          the tool raised while running; the cause is chained
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, overload

import anyio
import anyio.to_thread
import pydantic

from rhizome.engine.errors import RhizomeError
from rhizome.engine.graphs.durable import InterruptSignal

__all__ = (
    "FunctionTool",
    "Tool",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolError",
    "ToolResult",
    "parse_docstring",
    "to_text",
    "tool",
)


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECTION = re.compile(r"^\s*([A-Z][A-Za-z ]*):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_ARGS_HEADERS = {"Args", "Arguments", "Parameters", "Params"}


class ToolDefinitionError(RhizomeError, TypeError):
    """A function cannot be turned into a tool (missing annotations, ``*args``, bad name)."""


class ToolArgumentError(RhizomeError, ValueError):
    """The arguments of a tool call are invalid.

    Attributes:
        tool: The tool's name.
        arguments: Names of the offending arguments (empty when the whole payload was bad).
    """

    def __init__(self, message: str, *, tool: str, arguments: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tool = tool
        self.arguments = arguments


class ToolError(RhizomeError, RuntimeError):
    """A tool raised while running; the original exception is the ``__cause__``.

    Attributes:
        tool: The tool's name.
    """

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(f"tool {tool!r} failed: {message}")
        self.tool = tool


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a tool call returned.

    Attributes:
        tool: The tool's name.
        value: The Python value the tool returned.
    """

    tool: str
    value: Any

    @property
    def text(self) -> str:
        """The value as text for the model: strings as they are, other values as JSON."""
        return to_text(self.value)

    def __str__(self) -> str:
        return self.text


def to_text(value: Any) -> str:
    """Render a tool's return value as text to show a model."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class Tool:
    """A callable an LM can use: name, description, parameter schema and an async call.

    Subclasses pass the arguments model to ``__init__`` and implement :meth:`invoke`.
    Most tools are made with the :func:`tool` decorator instead.

    Attributes:
        name: The name the model calls the tool by (letters, digits, ``_`` and ``-``).
        description: What the tool does, shown to the model.
        arguments_model: The pydantic model that validates arguments.
    """

    def __init__(
        self, *, name: str, description: str, arguments_model: type[pydantic.BaseModel]
    ) -> None:
        if not _NAME.match(name):
            raise ToolDefinitionError(
                f"tool name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-'"
            )
        self.name = name
        self.description = description
        self.arguments_model = arguments_model

    @functools.cached_property
    def parameters_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's parameters (an ``object`` schema)."""
        schema: dict[str, Any] = _strip_titles(self.arguments_model.model_json_schema())
        schema.setdefault("properties", {})
        return schema

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an entry of the OpenAI chat API's ``tools`` list."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters_schema}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def describe_parameters(self) -> str:
        """One line per parameter: name, type, required or default, description."""
        props: dict[str, Any] = self.parameters_schema.get("properties", {})
        if not props:
            return f"tool {self.name!r} takes no arguments"
        required = set(self.parameters_schema.get("required", []))
        lines = [f"parameters of tool {self.name!r}:"]
        for pname, prop in props.items():
            status = (
                "required" if pname in required else f"default {json.dumps(prop.get('default'))}"
            )
            desc = f": {prop['description']}" if prop.get("description") else ""
            lines.append(f"  - {pname} ({_schema_type(prop)}, {status}){desc}")
        return "\n".join(lines)

    def validate(self, arguments: Mapping[str, Any] | str | None) -> dict[str, Any]:
        """Parse and validate call arguments, or raise :class:`ToolArgumentError`."""
        payload = self._decode(arguments)
        try:
            model = self.arguments_model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise self._argument_error(exc) from None
        return {key: getattr(model, key) for key in type(model).model_fields}

    async def __call__(
        self, arguments: Mapping[str, Any] | str | None = None, /, **kwargs: Any
    ) -> ToolResult:
        """Validate the arguments and run the tool.

        Args:
            arguments: The arguments as a mapping or as JSON text (an LM's tool call).
            **kwargs: Arguments given as keywords, merged over a mapping ``arguments``.

        Raises:
            ToolArgumentError: The arguments are invalid.
            ToolError: The tool raised while running.
        """
        if kwargs:
            if isinstance(arguments, str):
                raise ToolArgumentError(
                    "pass arguments either as JSON text or as keywords, not both", tool=self.name
                )
            arguments = {**(arguments or {}), **kwargs}
        values = self.validate(arguments)
        try:
            value = await self.invoke(values)
        except (ToolError, ToolArgumentError, InterruptSignal):  # a question stops the run
            raise
        except Exception as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}", tool=self.name) from exc
        return ToolResult(self.name, value)

    async def observe(self, arguments: Mapping[str, Any] | str | None = None) -> str:
        """Run the tool and return text for the model; errors become the text instead."""
        try:
            return (await self(arguments)).text
        except (ToolArgumentError, ToolError) as exc:
            return f"Error: {exc}"

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Run the tool on validated arguments; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement invoke()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _decode(self, arguments: Mapping[str, Any] | str | None) -> Any:
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            return {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ToolArgumentError(
                    f"the arguments of tool {self.name!r} are not valid JSON ({exc}); send one "
                    f"JSON object.\n{self.describe_parameters()}",
                    tool=self.name,
                ) from None
        if not isinstance(arguments, Mapping):
            raise ToolArgumentError(
                f"the arguments of tool {self.name!r} must be a JSON object, got "
                f"{type(arguments).__name__}.\n{self.describe_parameters()}",
                tool=self.name,
            )
        return dict(arguments)

    def _argument_error(self, exc: pydantic.ValidationError) -> ToolArgumentError:
        props = self.parameters_schema.get("properties", {})
        problems, names = [], []
        for err in exc.errors(include_url=False):
            name = ".".join(str(part) for part in err["loc"]) or "(arguments)"
            names.append(name)
            top = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "missing":
                expected = _schema_type(props.get(top, {}))
                problems.append(f"missing required argument {name!r} ({expected})")
            elif err["type"] == "extra_forbidden":
                known = ", ".join(props) or "none"
                problems.append(f"unknown argument {name!r}; known arguments: {known}")
            else:
                got = _short(err.get("input"))
                problems.append(f"argument {name!r}: {err['msg']} (got {got})")
        message = f"invalid arguments for tool {self.name!r}: " + "; ".join(problems)
        return ToolArgumentError(
            f"{message}.\n{self.describe_parameters()}", tool=self.name, arguments=tuple(names)
        )


class FunctionTool(Tool):
    """A tool that runs a typed, documented Python function (sync or async).

    Attributes:
        fn: The wrapped function.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        tool_name: str = name or str(getattr(fn, "__name__", ""))
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        model, self._positional = _arguments_model(fn, tool_name, arg_docs)
        super().__init__(
            name=tool_name,
            description=summary if description is None else description,
            arguments_model=model,
        )
        self.fn = fn
        self._limiter = limiter
        self._is_async = inspect.iscoroutinefunction(fn)

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Call the function; a sync function runs in a worker thread."""
        args = [arguments.pop(key) for key in self._positional]
        if self._is_async:
            return await self.fn(*args, **arguments)
        call = functools.partial(self.fn, *args, **arguments)
        result = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        if inspect.isawaitable(result):
            result = await result
        return result


@overload
def tool(
    fn: Callable[..., Any], /, *, name: str | None = None, description: str | None = None
) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a typed, documented function into a :class:`Tool`.

    Use it bare (``@tool``) or with overrides (``@tool(name="search")``). The
    parameter schema comes from the type hints; the description is the docstring's
    text before its sections, and the ``Args:`` section describes each parameter.

    Args:
        fn: The function (sync or async); every parameter needs a type annotation.
        name: The tool's name; defaults to the function's name.
        description: The tool's description; defaults to the docstring summary.

    Raises:
        ToolDefinitionError: A parameter lacks an annotation, or ``*args``/``**kwargs`` is used.
    """
    if fn is not None:
        return FunctionTool(fn, name=name, description=description)

    def decorate(function: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(function, name=name, description=description)

    return decorate


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its description and ``Args:`` entries.

    Returns:
        The text before the first section (``Args:``, ``Returns:``...) and a mapping
        from parameter name to its description.
    """
    summary: list[str] = []
    sections: dict[str, list[str]] = {}
    target = summary
    for line in inspect.cleandoc(doc).splitlines() if doc else []:
        header = _SECTION.match(line)
        if header and not line.startswith((" ", "\t")):
            target = sections.setdefault(header.group(1), [])
        else:
            target.append(line)
    arg_lines = next((sections[h] for h in _ARGS_HEADERS if h in sections), [])
    return "\n".join(summary).strip(), _parse_args_section(arg_lines)


def _parse_args_section(lines: list[str]) -> dict[str, str]:
    """Read ``name (type): text`` entries; deeper-indented lines continue an entry."""
    args: dict[str, str] = {}
    current: str | None = None
    entry_indent = -1
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line.strip())
        if match and (current is None or indent <= entry_indent):
            current, entry_indent = match.group(1).lstrip("*"), indent
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return args


def _arguments_model(
    fn: Callable[..., Any], name: str, arg_docs: dict[str, str]
) -> tuple[type[pydantic.BaseModel], tuple[str, ...]]:
    if not callable(fn):
        raise ToolDefinitionError(f"@tool needs a function, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"cannot read the signature of tool {name!r}: {exc}") from exc
    fields: dict[str, Any] = {}
    positional: list[str] = []
    for param in signature.parameters.values():
        _check_parameter(param, hints, name)
        default = ... if param.default is inspect.Parameter.empty else param.default
        desc = arg_docs.get(param.name)
        fields[param.name] = (hints[param.name], pydantic.Field(default, description=desc))
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(param.name)
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False)
    try:
        model = pydantic.create_model(f"{name}_arguments", __config__=config, **fields)
        model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.errors.PydanticSchemaGenerationError) as exc:
        raise ToolDefinitionError(
            f"tool {name!r} has a parameter type pydantic cannot describe: {exc}"
        ) from exc
    return model, tuple(positional)


def _check_parameter(param: inspect.Parameter, hints: dict[str, Any], name: str) -> None:
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise ToolDefinitionError(
            f"tool {name!r} cannot take *{param.name} or **{param.name}; "
            "declare each argument as a named, annotated parameter"
        )
    if param.name not in hints:
        raise ToolDefinitionError(
            f"parameter {param.name!r} of tool {name!r} has no type annotation; annotate "
            f"every parameter (e.g. '{param.name}: str') so its JSON schema can be built"
        )


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's auto-generated ``title`` keys (noise for the model)."""
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {k: _strip_titles(v) for k, v in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    if "type" in prop:
        kind = prop["type"]
        if kind == "array" and isinstance(prop.get("items"), dict):
            return f"array of {_schema_type(prop['items'])}"
        return kind if isinstance(kind, str) else " or ".join(kind)
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(_schema_type(p) for p in prop[key])
    if "$ref" in prop:
        return "object " + str(prop["$ref"]).rsplit("/", 1)[-1]
    return "any value"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
