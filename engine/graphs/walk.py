"""The one walk over a program: every node at every depth, in a stable order.

Parameters, saving and its fingerprint, drawing, the optimizers' search spaces
and the descriptions shown to a prompt model all see a graph through
:func:`visits`, so they agree on which nodes exist and what they are called.
What a node nests is its own business: it lists it in
:meth:`~rhizome.engine.graphs.node.Node.children` (a graph its nodes, a ``Loop`` its
body, a sampling wrapper the node it wraps).

A child named ``""`` is *transparent*: it shares its parent's path. That keeps
the names users already know: the predictor of a ``Predict`` wrapped in a
``BestOfN`` at ``"best"`` is ``"best"``, and a loop body's nodes are
``"hops.query"``, not ``"hops.body.query"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.graphs.node import Node

__all__ = ("Visit", "graphs", "join", "visits", "walk")


@dataclasses.dataclass(frozen=True)
class Visit:
    """One node met by the walk.

    Attributes:
        path: Dotted path from the root (``"hops.query"``); ``""`` for the root.
        node: The node.
        depth: How many containers enclose it (the root's children are at 1).
        graph: The nearest graph whose edges wire this node (None for the root).
        name: The node's name in ``graph`` (for a transparent child, its
            container's name there).
    """

    path: str
    node: Node
    depth: int
    graph: Graph | None
    name: str


def join(path: str, name: str) -> str:
    """``path.name``, leaving out empty parts (transparent children, the root)."""
    return f"{path}.{name}" if path and name else path or name


def visits(root: Node) -> Iterator[Visit]:
    """``root`` and everything nested in it, parents before children, in insertion order."""
    top = Visit("", root, 0, None, "")
    yield top
    yield from _below(top)


def _below(parent: Visit) -> Iterator[Visit]:
    node = parent.node
    for name, child in node.children():
        path = join(parent.path, name)
        if node.wires_children:  # a graph wires its children by their names
            visit = Visit(path, child, parent.depth + 1, cast("Graph", node), name)
        else:  # anything else passes on the graph (and name) that wires it
            visit = Visit(path, child, parent.depth + 1, parent.graph, parent.name)
        yield visit
        yield from _below(visit)


def walk(root: Node) -> Iterator[tuple[str, Node]]:
    """``(path, node)`` for every node nested in ``root`` (the root itself left out)."""
    for visit in visits(root):
        if visit.depth:
            yield visit.path, visit.node


def graphs(root: Node) -> Iterator[tuple[str, Graph]]:
    """``(path, graph)`` for ``root`` (when a graph) and every graph nested in it."""
    for visit in visits(root):
        if visit.node.wires_children:
            yield visit.path, cast("Graph", visit.node)
