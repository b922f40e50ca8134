"""Plain-text descriptions of a graph, one of its LM nodes, and a dataset.

Instruction proposal shows these to the prompt model so that a proposed
instruction fits where the node sits: what feeds each input, what each output
feeds, and what the data looks like.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.walk import graphs, join, visits

if TYPE_CHECKING:
    from rhizome.engine.call.signature import Field
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.graphs.node import Node

__all__ = ("describe_data", "describe_graph", "describe_node", "locate")


def describe_graph(graph: Graph) -> str:
    """The program's nodes at every depth (kind and fields, nested ones indented) and edges."""
    ins, outs = _names(graph.inputs), _names(graph.outputs)
    lines = [f"Program {graph.name!r}: inputs {ins} -> outputs {outs}"]
    for visit in visits(graph):
        if visit.depth:
            indent = "    " * (visit.depth - 1)
            lines.append(f"{indent}- node {visit.path}: {visit.node.describe()}")
    for path, inner in graphs(graph):
        for a, b, mappings, when in inner.edges:
            a, b = join(path, a), join(path, b)
            fields = ", ".join(f"{a}.{x} -> {b}.{y}" for x, y in mappings) or f"{a} -> {b}"
            cond = " (only when a condition holds)" if when is not None else ""
            lines.append(f"- edge {fields}{cond}")
    return "\n".join(lines)


def _names(fields: Mapping[str, Any]) -> str:
    return ", ".join(fields) or "(none)"


def locate(graph: Graph, path: str) -> tuple[Graph, str, Node, str]:
    """``(graph wiring it, node name there, node, role)`` of the node owning a predictor path.

    Raises:
        ConfigError: No node of the graph owns that path.
    """
    for visit in visits(graph):
        for role, _ in visit.node.own_predictors():
            if join(visit.path, role) == path and visit.graph is not None:
                return visit.graph, visit.name, visit.node, role
    paths = ", ".join(p for p, _ in graph.named_predictors()) or "none"
    raise ConfigError(f"graph {graph.name!r} has no LM node at {path!r}; its predictors: {paths}")


def describe_node(graph: Graph, path: str) -> str:
    """One LM node: its signature with field types and descriptions, and its neighbours."""
    container, name, node, role = locate(graph, path)
    predictor = dict(graph.named_predictors())[path]
    sig = predictor.signature
    lines = [f"Step {path!r} ({node.kind}{', role ' + role if role else ''})."]
    lines.append("Inputs:")
    feeds = _incoming(container, name)
    for f in sig.inputs.values():
        source = feeds.get(f.name, f"the program input {f.name!r}")
        lines.append(f"- {_field(f)}; comes from {source}")
    lines.append("Outputs:")
    outgoing = _outgoing(container, name)
    for f in sig.outputs.values():
        targets = outgoing.get(f.name) or ["the program's result"]
        lines.append(f"- {_field(f)}; goes to {', '.join(targets)}")
    return "\n".join(lines)


def _field(f: Field) -> str:
    desc = f": {f.desc}" if f.desc else ""
    return f"{f.name} ({f.type_name}){desc}"


def _incoming(graph: Graph, name: str) -> dict[str, str]:
    nodes = graph.nodes
    out: dict[str, str] = {}
    for a, b, mappings, _ in graph.edges:
        if b == name:
            for x, y in mappings:
                out[y] = f"output {x!r} of {a!r} ({nodes[a].describe()})"
    return out


def _outgoing(graph: Graph, name: str) -> dict[str, list[str]]:
    nodes = graph.nodes
    out: dict[str, list[str]] = {}
    for a, b, mappings, _ in graph.edges:
        if a == name:
            for x, y in mappings:
                out.setdefault(x, []).append(f"input {y!r} of {b!r} ({nodes[b].describe()})")
    return out


def describe_data(examples: Sequence[Mapping[str, Any]]) -> str:
    """Statistics of a dataset: size, and per field its kind of values and typical length."""
    lines = [f"{len(examples)} examples."]
    keys = list(dict.fromkeys(k for e in examples for k in e))
    for key in keys:
        values = [e[key] for e in examples if key in e]
        lines.append(f"- {key}: {_field_stats(values)}")
    tags = Counter(t for e in examples for t in getattr(e, "tags", ()))
    if tags:
        lines.append("Tags: " + ", ".join(f"{t} ({n})" for t, n in tags.most_common(10)))
    return "\n".join(lines)


def _field_stats(values: list[Any]) -> str:
    kinds = Counter(type(v).__name__ for v in values)
    kind = ", ".join(k for k, _ in kinds.most_common(3))
    if all(isinstance(v, str) for v in values):
        words = [len(v.split()) for v in values]
        distinct = len(set(values))
        avg = sum(words) / len(words) if words else 0.0
        return (
            f"text, {avg:.1f} words on average (max {max(words, default=0)}), {distinct} distinct"
        )
    if all(isinstance(v, list | tuple) for v in values):
        sizes = [len(v) for v in values]
        return f"lists of {min(sizes, default=0)}-{max(sizes, default=0)} items"
    return f"{kind} values, {len(set(map(repr, values)))} distinct"
