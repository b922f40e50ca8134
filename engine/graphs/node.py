"""The node base class: what the graph needs from every kind of node.

A node declares typed input and output fields and an async ``forward`` that maps
one to the other. Three small methods tell the rest of rhizome what a node holds:

- :meth:`Node.children`: the nodes nested in it (a graph's nodes, a loop's
  body); :mod:`rhizome.engine.graphs.walk` follows them to reach every depth.
- :meth:`Node.own_predictors`: the LM call patterns it owns itself.
- :meth:`Node.parameter_slots`: its tunable slots (by default every slot of
  every own predictor); :mod:`rhizome.engine.graphs.params` names them by path.

A node also runs on its own, ``Predict("question -> answer")(question=..., lm=lm)``
or ``await node.acall(...)``: it runs as the only node of a graph built for the
call, so its trace, the response cache and the LM's limits are those of any
graph run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import anyio

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.graphs.walk import join, walk

if TYPE_CHECKING:
    from rhizome.engine.call.signature import Field
    from rhizome.engine.client.cache import ResponseCache
    from rhizome.engine.client.policy import CallPolicy
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.client.retry import RetryPolicy
    from rhizome.engine.example import Prediction
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.slots import Slot
    from rhizome.engine.trace import Trace

__all__ = ("Node", "register_graph_type")

# The class that runs a node on its own (see Node.alone). A graph is a node, so this
# module cannot import it; rhizome.engine.graphs.graph registers it when imported.
_GRAPH_TYPE: list[type[Graph]] = []


def register_graph_type(graph_type: type[Graph]) -> None:
    """Make ``graph_type`` the graph that :meth:`Node.alone` builds (done by the graph module)."""
    _GRAPH_TYPE[:] = [graph_type]


class Node:
    """Base class of every node kind.

    Subclasses implement :attr:`inputs`, :attr:`outputs` and :meth:`forward`.

    Attributes:
        timeout: Seconds this node may run before it fails, or None for the
            run's default.
    """

    kind: ClassVar[str] = "Node"
    # True for a graph: its children are wired by its own edges, under their names.
    wires_children: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in vars(cls):
            cls.kind = cls.__name__

    policy: CallPolicy | None = None
    """How the LM calls made while this node runs are retried, timed and cached
    (:class:`~rhizome.engine.client.policy.CallPolicy`); None: as the enclosing
    node's, else the LM's own. Set it with :meth:`with_policy`."""

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout

    def with_policy(
        self,
        policy: CallPolicy | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        cache: bool | ResponseCache | Literal["refresh"] | None = None,
    ) -> Self:
        """Give this node's LM calls their own retries, request timeout or cache; chainable.

        Pass a :class:`~rhizome.engine.client.policy.CallPolicy`, or its fields
        (``retry=RetryPolicy(max_retries=0)``, ``timeout=5``, ``cache=False``);
        fields left None keep the enclosing node's setting, else the LM's.
        The node's own time limit stays its ``timeout=`` constructor argument.

        Raises:
            ConfigError: A value has the wrong type, or both a policy and fields are given.
        """
        from rhizome.engine.client.policy import CallPolicy
        from rhizome.engine.errors import ConfigError

        fields = {"retry": retry, "timeout": timeout, "cache": cache}
        if policy is not None and any(v is not None for v in fields.values()):
            raise ConfigError("with_policy() takes a CallPolicy or its fields, not both")
        if policy is not None and not isinstance(policy, CallPolicy):
            raise ConfigError(f"with_policy() takes a CallPolicy, got {policy!r}")
        self.policy = policy if policy is not None else CallPolicy(**fields)  # type: ignore[arg-type]
        return self

    @property
    def inputs(self) -> Mapping[str, Field]:
        """Input fields by name."""
        raise NotImplementedError

    @property
    def outputs(self) -> Mapping[str, Field]:
        """Output fields by name."""
        raise NotImplementedError

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Compute the output fields from the input fields."""
        raise NotImplementedError

    def children(self) -> Iterator[tuple[str, Node]]:
        """Yield ``(name, node)`` for each node nested directly in this one.

        The name is the child's path segment; ``""`` makes the child share this
        node's path (a wrapped node, a loop's body graph). Leaf nodes yield
        nothing.
        """
        return iter(())

    def own_predictors(self) -> Iterator[tuple[str, Predictor]]:
        """Yield ``(role, predictor)`` for each predictor this node holds itself.

        ``role`` is ``""`` for a node's main predictor and a short name
        (``"step"``, ``"extract"``) otherwise. The default finds every
        predictor attribute; predictors of child nodes are the children's.
        """
        for value in vars(self).values():
            if isinstance(value, Predictor):
                yield value.role, value

    def parameter_slots(self) -> dict[str, Slot]:
        """This node's own tunable slots by name (``"instruction"``, ``"step.demos"``, ``"k"``).

        The default lists every slot of every own predictor, under its role.
        A node with other tunable state extends this (see ``Retrieve``).
        """
        return {
            join(role, name): slot
            for role, predictor in self.own_predictors()
            for name, slot in predictor.parameter_slots().items()
        }

    def named_predictors(self) -> Iterator[tuple[str, Predictor]]:
        """Yield ``(path, predictor)`` for this node and everything nested in it.

        The path is the owning node's path joined with the role: ``""`` for
        this node's main predictor, ``"step"``, ``"sub.answer"``.
        """
        for path, node in [("", self), *walk(self)]:
            for role, predictor in node.own_predictors():
                yield join(path, role), predictor

    def copy(self) -> Self:
        """A copy whose predictors (and child nodes) are independent of this one.

        LMs, retrievers and tools are shared, not copied: they are connections,
        not parameters.
        """
        from rhizome.engine.call.predictor import Predictor

        new = copy.copy(self)
        for attr, value in list(vars(new).items()):
            if isinstance(value, Predictor | Node):
                setattr(new, attr, value.copy())
            elif isinstance(value, list) and value and all(isinstance(v, Node) for v in value):
                setattr(new, attr, [v.copy() for v in value])
        return new

    async def acall(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: LM | None = None,
        trace: Trace | None = None,
        **fields: Any,
    ) -> Prediction:
        """Run this node on its own and return its outputs with the run's trace.

        It runs as the one node of a graph (see :meth:`alone`; a graph runs
        itself), so it takes what :meth:`Graph.run
        <rhizome.engine.graphs.graph.Graph.run>` takes.

        Raises:
            ConfigError: The node makes LM calls and no LM is given, bound or
                set with ``rhizome.context(lm=...)``.
        """
        return await self.alone(lm).run(inputs, lm=lm, trace=trace, **fields)

    def __call__(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: LM | None = None,
        trace: Trace | None = None,
        **fields: Any,
    ) -> Prediction:
        """Run this node (a graph: the graph) synchronously, as :meth:`acall` does.

        It works where an event loop already runs in this thread (notebooks):
        the run then goes to a worker thread, carrying this thread's context so
        ``with rhizome.context(...)`` still applies.
        """
        call = functools.partial(self.acall, inputs, lm=lm, trace=trace, **fields)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return anyio.run(call)
        ctx = contextvars.copy_context()

        def in_thread() -> Prediction:
            return ctx.run(anyio.run, call)

        with concurrent.futures.ThreadPoolExecutor(1, "rhizome-sync") as pool:
            return pool.submit(in_thread).result()

    def alone(self, lm: LM | None = None) -> Graph:
        """A graph holding only this node (not a copy), named after its kind; built once.

        Args:
            lm: The LM the run will be given, if any; without one, every
                predictor must be bound to an LM or one must be set with
                ``rhizome.context(lm=...)``.

        Raises:
            ConfigError: The node needs an LM and none is given, bound or set.
        """
        from rhizome.engine.context import settings
        from rhizome.engine.errors import ConfigError

        if not _GRAPH_TYPE:
            raise ConfigError(
                "no graph type is registered to run a node on its own: import rhizome "
                "(or rhizome.engine.graphs.graph) first"
            )
        (graph_type,) = _GRAPH_TYPE
        unbound = [path or "(main)" for path, p in self.named_predictors() if p.lm is None]
        if unbound and lm is None and settings().lm is None:
            raise ConfigError(
                f"{self.describe()} has no LM for {', '.join(unbound)}: pass one when calling "
                "it, node(question=..., lm=OpenAILM(...)), set one with "
                "`with rhizome.context(lm=...)`, or bind one with lm=... when building it"
            )
        # Kept in a tuple, not as a Node attribute, so that copy() does not copy the graph;
        # a copy finds a graph holding another node and builds its own.
        kept: tuple[Graph] | None = vars(self).get("_alone")
        if kept is not None and next(iter(kept[0].nodes.values())) is self:
            return kept[0]
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", self.kind).lower()
        name = name if name.isidentifier() else "node"
        graph = graph_type(name).add(name, self)
        self._alone = (graph,)
        return graph

    def describe(self) -> str:
        """One line for drawings and errors: kind and signature."""
        ins = ", ".join(self.inputs)
        outs = ", ".join(self.outputs)
        return f"{self.kind}({ins} -> {outs})"
