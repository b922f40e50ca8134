"""The node base class: what the graph needs from every kind of node.

A node declares typed input and output fields and an async ``forward`` that maps
one to the other. Nodes that call an LM hold :class:`~rhizome.engine.predictor.Predictor`
objects and list them in :meth:`Node.named_predictors`; that one walk is how
optimizers find every tunable slot (instruction, demos, temperature, LM).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from rhizome.engine.predictor import Predictor
    from rhizome.engine.signature import Field


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

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout

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

    def named_predictors(self) -> Iterator[tuple[str, Predictor]]:
        """Yield ``(role, predictor)`` for each LM call pattern this node owns.

        ``role`` is ``""`` for a node's main predictor and a short name
        (``"step"``, ``"extract"``) otherwise; the parameter path is
        ``node`` or ``node.role``. Nodes that contain nodes yield their
        children's predictors with the child's name prefixed.
        """
        from rhizome.engine.predictor import Predictor

        for value in vars(self).values():
            if isinstance(value, Predictor):
                yield value.role, value

    def copy(self) -> Self:
        """A copy whose predictors (and child nodes) are independent of this one.

        LMs, retrievers and tools are shared, not copied: they are connections,
        not parameters.
        """
        from rhizome.engine.predictor import Predictor

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
