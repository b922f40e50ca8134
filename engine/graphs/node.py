"""The node base class: what the graph needs from every kind of node.

A node declares typed input and output fields and an async ``forward`` that maps
one to the other. Three small methods tell the rest of rhizome what a node holds:

- :meth:`Node.children`: the nodes nested in it (a graph's nodes, a loop's
  body); :mod:`rhizome.engine.graphs.walk` follows them to reach every depth.
- :meth:`Node.own_predictors`: the LM call patterns it owns itself.
- :meth:`Node.parameter_slots`: its tunable slots (by default every slot of
  every own predictor); :mod:`rhizome.engine.graphs.params` names them by path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from rhizome.engine.graphs.walk import join, walk

if TYPE_CHECKING:
    from rhizome.engine.call.predictor import Predictor
    from rhizome.engine.call.signature import Field
    from rhizome.engine.client.cache import ResponseCache
    from rhizome.engine.client.policy import CallPolicy
    from rhizome.engine.client.retry import RetryPolicy
    from rhizome.engine.graphs.params import Slot

__all__ = ("Node",)


class Node:
    """Base class of every node kind.

    Subclasses implement :attr:`inputs`, :attr:`outputs` and :meth:`forward`.

    Attributes:
        timeout: Seconds this node may run before it fails, or None for the
            run's default.
    """

    kind: ClassVar[str] = "Node"

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
        from rhizome.engine.call.predictor import Predictor

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

    def describe(self) -> str:
        """One line for drawings and errors: kind and signature."""
        ins = ", ".join(self.inputs)
        outs = ", ".join(self.outputs)
        return f"{self.kind}({ins} -> {outs})"
