"""Routers: nodes that pick which branch of a graph runs next.

A :class:`Router` writes one output, ``route``, whose value is one of a fixed
list of names. It decides either with an LM (a signature whose ``route`` output
becomes ``Literal[...]`` of the names) or with a plain function. Branches hang
off it with conditional edges; :func:`route_to` builds their conditions::

    g.add("route", Router("question -> route", routes=["math", "lookup"]))
    g.connect("route", "calc", when=route_to("math"))
    g.connect("route", "search", when=route_to("lookup"))

Nodes behind an edge whose condition is false are skipped, and so is
everything that needs only their outputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.node import Node

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("RouteIs", "Router", "route_to")


ROUTE = "route"
ROUTE_DESC = "the name of the branch to take"


class RouteIs:
    """An edge condition true when a router chose one of some routes.

    Args:
        names: The routes for which the edge is taken.
        field: The output holding the route (``"route"``).
    """

    def __init__(self, *names: str, field: str = ROUTE) -> None:
        if not names:
            raise ConfigError("route_to() needs at least one route name")
        self.names = frozenset(names)
        self.field = field

    def __call__(self, outputs: dict[str, Any]) -> bool:
        """True when ``outputs[field]`` is one of the names."""
        return outputs.get(self.field) in self.names

    def __repr__(self) -> str:
        names = ", ".join(repr(n) for n in sorted(self.names))
        return f"route_to({names})"


def route_to(*names: str, field: str = ROUTE) -> RouteIs:
    """The ``when=`` condition of an edge taken when the router chose one of ``names``.

    Example:
        >>> cond = route_to("math")
        >>> cond({"route": "math"}), cond({"route": "lookup"})
        (True, False)
    """
    return RouteIs(*names, field=field)


class Router(Node):
    """A node whose ``route`` output names the branch to take.

    Args:
        decide: A signature (``"question -> route"``, or just the inputs,
            ``"question"``; a missing ``route``
            output is added, and its type becomes ``Literal`` of the routes) for
            an LM decision, or a function ``fn(**inputs) -> str`` (sync functions
            run in a worker thread; ``async def`` functions are awaited).
        routes: The route names, at least two.
        inputs: For a function: the input field names (default: its parameters).
        instruction: For a signature: overrides its instruction.
        lm: For a signature: bind the decision to one LM.
        timeout: Seconds the node may run, None for the run's default.

    Attributes:
        predictor: The tunable predictor of an LM router, else None.
    """

    kind = "Router"

    def __init__(
        self,
        decide: str | Signature | type[Signature] | Callable[..., Any],
        routes: Sequence[str],
        *,
        inputs: Sequence[str] | None = None,
        instruction: str | None = None,
        lm: LM | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        self.routes = _check_routes(routes)
        self.predictor: Predictor | None = None
        self._fn: Callable[..., Any] | None = None
        if isinstance(decide, str | Signature) or (
            isinstance(decide, type) and issubclass(decide, Signature)
        ):
            if isinstance(decide, str) and "->" not in decide:
                decide = f"{decide} -> {ROUTE}"
            signature = _route_signature(Signature.coerce(decide), self.routes)
            self.predictor = Predictor(signature, instruction=instruction, lm=lm)
            self._inputs = signature.inputs
            self._outputs = signature.outputs
        elif callable(decide):
            self._fn = decide
            names = list(inputs) if inputs is not None else _parameters(decide)
            self._inputs = {n: Field(n, Any) for n in names}
            self._outputs = {ROUTE: Field(ROUTE, self._route_type(), ROUTE_DESC, is_input=False)}
        else:
            raise ConfigError(
                f"Router takes a signature or a function, got {type(decide).__name__}"
            )

    def _route_type(self) -> Any:
        return Literal[tuple(self.routes)]

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The fields the decision reads."""
        return dict(self._inputs)

    @property
    def outputs(self) -> Mapping[str, Field]:
        """``route`` (and any other outputs of an LM router's signature)."""
        return dict(self._outputs)

    def route_to(self, *names: str) -> RouteIs:
        """Like :func:`route_to`, but checks that each name is one of this router's routes."""
        unknown = [n for n in names if n not in self.routes]
        if unknown:
            raise ConfigError(
                f"unknown route(s) {', '.join(map(repr, unknown))}; "
                f"this router's routes are: {', '.join(self.routes)}"
            )
        return RouteIs(*names)

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Decide the route (and any other outputs)."""
        if self.predictor is not None or self._fn is None:
            return await self._predictor()(**inputs)
        fn = self._fn
        args = {name: inputs[name] for name in self._inputs if name in inputs}
        if inspect.iscoroutinefunction(fn):
            route = await fn(**args)
        else:
            route = await anyio.to_thread.run_sync(lambda: fn(**args))
        if route not in self.routes:
            raise ValueError(
                f"the routing function returned {route!r}; it must return one of: "
                f"{', '.join(self.routes)}"
            )
        return {ROUTE: route}

    def _predictor(self) -> Predictor:
        if self.predictor is None:
            raise ConfigError("this Router decides with a function and has no predictor")
        return self.predictor

    def __repr__(self) -> str:
        how = (
            self.predictor.signature.spec()
            if self.predictor
            else getattr(self._fn, "__name__", "fn")
        )
        return f"Router({how!r}, routes={self.routes!r})"


def _check_routes(routes: Sequence[str]) -> list[str]:
    if isinstance(routes, str):
        raise ConfigError(f"routes= takes a list of names, not the string {routes!r}")
    names = list(routes)
    if len(names) < 2 or not all(isinstance(r, str) and r for r in names):
        raise ConfigError(f"a Router needs at least two non-empty route names, got {names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"route names must be unique, got {names!r}")
    return names


def _route_signature(signature: Signature, routes: list[str]) -> Signature:
    """The signature with a ``route: Literal[...]`` output (added or retyped)."""
    route_type = Literal[tuple(routes)]  # type: ignore[valid-type]
    old = signature.outputs.get(ROUTE)
    if old is None and ROUTE in signature.inputs:
        raise ConfigError(f"the router's signature {signature.spec()!r} has an input named 'route'")
    desc = old.desc if old is not None and old.desc else ROUTE_DESC
    new = Field(ROUTE, route_type, desc, is_input=False)
    if old is not None:
        fields = [new if f.name == ROUTE and not f.is_input else f for f in signature.fields]
    else:
        fields = [*signature.fields, new]
    return Signature(fields=fields, instruction=signature.instruction)


def _parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "cannot read the routing function's parameters; pass inputs=[...]"
        ) from exc
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in kinds]
    if not names:
        raise ConfigError("the routing function takes no named parameters; pass inputs=[...]")
    return names
