"""FunctionNode: any Python callable as a graph node.

Inputs come from the function's parameters and type hints; outputs are
declared (``outputs=["passages"]`` or ``{"passages": list[str]}``) or inferred
from a ``TypedDict`` / pydantic return annotation. Synchronous functions run in
a worker thread (optionally under a shared ``CapacityLimiter``), so blocking
work never stalls the event loop; ``async def`` functions are awaited::

    def search(query: str, k: int = 3) -> list[str]: ...

    node = FunctionNode(search, outputs=["passages"])   # passages: list[str]
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import anyio
import pydantic

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import GraphError
from rhizome.engine.graphs.node import Node

__all__ = ("FunctionNode",)


Declared = Iterable[str] | Mapping[str, Any] | str | None


class FunctionNode(Node):
    """A node that calls a Python function with its inputs as keyword arguments.

    Args:
        fn: A sync or async callable.
        inputs: Input names (or names mapped to types); inferred from the
            parameters when omitted.
        outputs: Output names (or names mapped to types); inferred from a
            TypedDict or pydantic return annotation when omitted. With one
            output, a returned value that is not a dict of outputs is wrapped
            as ``{output: value}``.
        name_hint: The name shown in errors (the function's name by default).
        timeout: Seconds the call may take before the node fails.
        limiter: A ``CapacityLimiter`` shared by sync functions that must not
            run too many at once (anyio's default thread limiter otherwise).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        inputs: Declared = None,
        outputs: Declared = None,
        name_hint: str | None = None,
        timeout: float | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if not callable(fn):
            raise GraphError(f"FunctionNode needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name: str = name_hint or str(getattr(fn, "__name__", type(fn).__name__))
        self.limiter = limiter
        self.is_async = _is_async(fn)
        params = _parameters(fn, self.name)
        hints = _hints(fn)
        self._inputs = MappingProxyType(_input_fields(self.name, params, hints, inputs))
        self.optional_inputs = frozenset(
            n for n, p in params.items() if p.default is not inspect.Parameter.empty
        ) & frozenset(self._inputs)
        self._outputs = MappingProxyType(
            _output_fields(self.name, hints.get("return", Any), outputs)
        )
        # Outputs read off a pydantic return model: unpack the model into them.
        self._unpack_model = outputs is None

    @property
    def inputs(self) -> Mapping[str, Field]:
        """Input fields by name."""
        return self._inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """Output fields by name."""
        return self._outputs

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Call the function (in a worker thread if it is sync) and map its result to outputs."""
        if self.is_async:
            result = await self.fn(**inputs)
        else:
            call = functools.partial(self.fn, **inputs)
            # Abandoning on cancel lets a node timeout fire even though the thread
            # cannot be interrupted; the thread finishes in the background.
            result = await anyio.to_thread.run_sync(
                call, limiter=self.limiter, abandon_on_cancel=True
            )
        return self._to_outputs(result)

    def _to_outputs(self, result: Any) -> dict[str, Any]:
        names = list(self._outputs)
        if isinstance(result, pydantic.BaseModel) and self._unpack_model:
            result = {n: getattr(result, n) for n in names if hasattr(result, n)}
        if len(names) == 1 and not (isinstance(result, Mapping) and set(result) == set(names)):
            return {names[0]: result}
        if isinstance(result, tuple) and len(result) == len(names):
            return dict(zip(names, result, strict=True))
        if not isinstance(result, Mapping):
            raise TypeError(
                f"function {self.name!r} returned {type(result).__name__}, but FunctionNode "
                f"declares {len(names)} outputs ({', '.join(names)}); return a dict with "
                "those keys or a tuple in that order"
            )
        missing = [n for n in names if n not in result]
        if missing:
            got = ", ".join(map(str, result)) or "nothing"
            raise ValueError(
                f"function {self.name!r} returned no {', '.join(missing)}: it returned keys "
                f"{got}, but FunctionNode declares outputs {', '.join(names)}"
            )
        return {n: result[n] for n in names}

    def describe(self) -> str:
        """One line for drawings and errors."""
        return f"FunctionNode[{self.name}]({', '.join(self._inputs)} -> {', '.join(self._outputs)})"


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


def _parameters(fn: Callable[..., Any], name: str) -> dict[str, inspect.Parameter]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise GraphError(
            f"cannot read the parameters of {name!r} ({exc}); pass inputs=[...]"
        ) from None
    return dict(sig.parameters)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target: Any = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else None
    if target is None and isinstance(fn, functools.partial):
        target = fn.func
    if target is None:
        target = getattr(type(fn), "__call__", None)  # noqa: B004
    try:
        return typing.get_type_hints(target) if target is not None else {}
    except Exception:
        # Unresolvable forward references: fall back to untyped (Any) fields.
        return {}


def _input_fields(
    name: str, params: dict[str, inspect.Parameter], hints: dict[str, Any], declared: Declared
) -> dict[str, Field]:
    kinds = inspect.Parameter
    var_kw = any(p.kind is kinds.VAR_KEYWORD for p in params.values())
    by_kw = {
        n: p
        for n, p in params.items()
        if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    }
    if declared is None:
        if any(p.kind is kinds.POSITIONAL_ONLY and p.default is p.empty for p in params.values()):
            raise GraphError(
                f"function {name!r} has positional-only parameters; FunctionNode passes "
                "inputs by keyword, so wrap it in a function with named parameters"
            )
        return {n: Field(n, hints.get(n, Any)) for n in by_kw}
    fields = _declared(declared, hints, is_input=True)
    unknown = [n for n in fields if n not in by_kw and not var_kw]
    missing = [n for n, p in by_kw.items() if p.default is p.empty and n not in fields]
    if unknown or missing:
        raise GraphError(
            f"FunctionNode({name}): inputs=[...] must match the function's parameters "
            f"({', '.join(by_kw) or 'none'}); unknown: {', '.join(unknown) or 'none'}; "
            f"required but not declared: {', '.join(missing) or 'none'}"
        )
    return fields


def _output_fields(name: str, returns: Any, declared: Declared) -> dict[str, Field]:
    inferred = _fields_of_return(returns)
    if declared is None:
        if inferred is None:
            raise GraphError(
                f"FunctionNode({name}): cannot tell its outputs; pass outputs=['name'] "
                "(or a dict of names to types), or annotate the return with a TypedDict "
                "or pydantic model"
            )
        return inferred
    fields = _declared(declared, inferred or {}, is_input=False)
    if len(fields) == 1 and inferred is None and returns is not Any:
        (only,) = fields
        if fields[only].annotation is Any:
            fields[only] = Field(only, returns, is_input=False)
    if not fields:
        raise GraphError(f"FunctionNode({name}): outputs=[...] needs at least one name")
    return fields


def _fields_of_return(returns: Any) -> dict[str, Field] | None:
    if typing.is_typeddict(returns):
        hints = typing.get_type_hints(returns)
        return {n: Field(n, t, is_input=False) for n, t in hints.items()}
    if isinstance(returns, type) and issubclass(returns, pydantic.BaseModel):
        return {
            n: Field(n, f.annotation, f.description or "", is_input=False)
            for n, f in returns.model_fields.items()
        }
    return None


def _declared(
    declared: Iterable[str] | Mapping[str, Any] | str,
    types: Mapping[str, Any],
    *,
    is_input: bool,
) -> dict[str, Field]:
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, Mapping):
        items = list(declared.items())
    else:
        items = [(n, _type_of(types.get(n, Any))) for n in declared]
    fields: dict[str, Field] = {}
    for n, t in items:
        if not isinstance(n, str) or not n.isidentifier():
            raise GraphError(f"field name {n!r} is not a Python identifier")
        fields[n] = t if isinstance(t, Field) else Field(n, t, is_input=is_input)
    return fields


def _type_of(value: Any) -> Any:
    return value.annotation if isinstance(value, Field) else value
