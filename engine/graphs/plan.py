"""Wiring: turn a graph's nodes and edges into a checked, immutable run plan.

:func:`build_plan` is the one place a graph is validated. It resolves which
edge or graph input feeds every node input, which fields the graph returns,
and rejects what cannot run: cycles, unknown fields, incompatible types,
inputs fed twice, undeclared inputs, colliding outputs. The scheduler runs the
plan without re-checking anything.

Types across an edge: the check when wiring is lenient (see
:mod:`rhizome.engine.graphs.typecheck`): it refuses only what can never fit, such as a
list into a ``str``. An edge whose two ends are declared with different types
(``str`` into ``int``, ``Any`` into ``list[str]``, ``int`` into ``float``) is
marked in the plan, and the scheduler converts each value crossing it with
pydantic's lax mode (``"42"`` becomes ``42``, ``3`` becomes ``3.0``); a value
that does not convert (``"forty-two"`` into ``int``) fails the receiving node
with an error naming both ends and their types. Edges whose ends have the same
type, or whose target is ``Any``, cost nothing at run time. No value of the
wrong type reaches a node through an edge.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from rhizome.engine.errors import GraphError
from rhizome.engine.graphs.typecheck import compatible, needs_conversion

if TYPE_CHECKING:
    from rhizome.engine.call.signature import Field
    from rhizome.engine.graphs.node import Node

__all__ = (
    "Condition",
    "NodePlan",
    "Plan",
    "Source",
    "build_plan",
    "check_inputs",
    "check_types",
    "field_error",
    "node_of",
    "optional_inputs",
    "unknown_node",
)


Condition = Callable[[dict[str, Any]], bool]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source:
    """One output field that can feed an input: ``node.field``."""

    node: str
    field: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodePlan:
    """How one node gets its inputs.

    Attributes:
        name: The node's name in its graph.
        node: The node object.
        preds: Nodes that must finish (run or be skipped) before this one is decided.
        conditions: The ``when`` of each incoming edge, None when unconditional.
        feeds: For each edge-fed input field, its sources in connection order.
        from_graph: Input fields read from the graph input of the same name.
        required: Input fields without a default: missing ones skip the node.
        converts: Edge-fed inputs whose value must be converted to the input's
            type at run time (a source is declared with another type), by name.
    """

    name: str
    node: Node
    preds: tuple[str, ...]
    conditions: dict[str, Condition | None]
    feeds: dict[str, tuple[Source, ...]]
    from_graph: tuple[str, ...]
    required: frozenset[str]
    converts: Mapping[str, Field] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """A validated graph, ready to run."""

    name: str
    order: tuple[str, ...]
    nodes: dict[str, NodePlan]
    inputs: dict[str, Field]
    optional_inputs: frozenset[str]
    outputs: dict[str, Field]
    output_sources: dict[str, tuple[Source, ...]]

    @functools.cached_property
    def is_chain(self) -> bool:
        """True when no two nodes could ever run at once: each waits for the one before it."""
        order = self.order
        return all(order[i - 1] in self.nodes[order[i]].preds for i in range(1, len(order)))


def check_inputs(plan: Plan, values: Mapping[str, Any]) -> dict[str, Any]:
    """The graph inputs taken from ``values``; GraphError lists any required one missing."""
    missing = [k for k in plan.inputs if k not in values and k not in plan.optional_inputs]
    if missing:
        listed = ", ".join(
            f"{k} ({f.type_name}{', optional' if k in plan.optional_inputs else ''})"
            for k, f in plan.inputs.items()
        )
        raise GraphError(
            f"graph {plan.name!r} is missing required input(s): {', '.join(missing)}; "
            f"its inputs are: {listed}"
        )
    return {k: values[k] for k in plan.inputs if k in values}


def optional_inputs(node: Node) -> frozenset[str]:
    """The inputs of ``node`` that have defaults (nodes opt in with ``optional_inputs``)."""
    return frozenset(getattr(node, "optional_inputs", frozenset()))


def node_of(g: nx.DiGraph, name: str) -> Node:
    """The node object stored under ``name``."""
    node: Node = g.nodes[name]["node"]
    return node


def field_error(graph: str, g: nx.DiGraph, name: str, field: str, *, output: bool) -> GraphError:
    """The error for ``name.field`` not existing, listing the valid choices."""
    if name not in g:
        return unknown_node(graph, g, name)
    node = node_of(g, name)
    fields = node.outputs if output else node.inputs
    side = "output" if output else "input"
    valid = ", ".join(fields) or "none"
    return GraphError(
        f"node {name!r} ({node.kind}) in graph {graph!r} has no {side} {field!r}; "
        f"its {side}s are: {valid}"
    )


def unknown_node(graph: str, g: nx.DiGraph, name: str) -> GraphError:
    """The error for a node name that is not in the graph."""
    names = ", ".join(g.nodes) or "none (add nodes with .add(name, node))"
    return GraphError(f"graph {graph!r} has no node {name!r}; its nodes are: {names}")


def check_types(graph: str, g: nx.DiGraph, src: Source, dst: Source) -> None:
    """Raise GraphError when ``src`` clearly cannot feed ``dst``."""
    out = node_of(g, src.node).outputs.get(src.field)
    inp = node_of(g, dst.node).inputs.get(dst.field)
    if out is None:
        raise field_error(graph, g, src.node, src.field, output=True)
    if inp is None:
        raise field_error(graph, g, dst.node, dst.field, output=False)
    if not compatible(out.annotation, inp.annotation):
        raise GraphError(
            f"graph {graph!r}: cannot connect '{src.node}.{src.field}' ({out.type_name}) "
            f"to '{dst.node}.{dst.field}' ({inp.type_name}): the types are incompatible; "
            "convert between them with a FunctionNode"
        )


def build_plan(
    name: str,
    g: nx.DiGraph,
    *,
    inputs: Mapping[str, Field] | None,
    outputs: list[str] | None,
) -> Plan:
    """Validate the graph and return its run plan, or raise GraphError saying what to fix."""
    if not g.nodes:
        raise GraphError(f"graph {name!r} has no nodes; add some with .add(name, node)")
    order = _topological_order(name, g)
    may_skip = _may_skip(g, order)
    nodes = {n: _node_plan(name, g, n, may_skip) for n in order}
    graph_inputs, optional = _graph_inputs(name, g, nodes, inputs)
    out_fields, out_sources = _graph_outputs(name, g, order, may_skip, outputs)
    return Plan(
        name=name,
        order=order,
        nodes=nodes,
        inputs=graph_inputs,
        optional_inputs=optional,
        outputs=out_fields,
        output_sources=out_sources,
    )


def _topological_order(name: str, g: nx.DiGraph) -> tuple[str, ...]:
    try:
        return tuple(nx.topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(g)]
        path = " -> ".join([*cycle, cycle[0]])
        raise GraphError(
            f"graph {name!r} has a cycle: {path}; graphs must be acyclic "
            "(put loops inside a bounded Loop or agent node)"
        ) from None


def _may_skip(g: nx.DiGraph, order: tuple[str, ...]) -> dict[str, bool]:
    """Nodes that a router (a ``when`` edge) upstream may cause to be skipped."""
    skip: dict[str, bool] = {}
    for n in order:
        skip[n] = any(d["when"] is not None or skip[p] for p, _, d in g.in_edges(n, data=True))
    return skip


def _node_plan(graph: str, g: nx.DiGraph, name: str, may_skip: dict[str, bool]) -> NodePlan:
    node = node_of(g, name)
    edges = sorted(g.in_edges(name, data=True), key=lambda e: e[2]["order"])
    feeds: dict[str, list[Source]] = {}
    for src, _, data in edges:
        for src_field, dst_field in data["mappings"]:
            source = Source(node=src, field=src_field)
            check_types(graph, g, source, Source(node=name, field=dst_field))
            feeds.setdefault(dst_field, []).append(source)
    for field, sources in feeds.items():
        if len(sources) > 1 and not all(may_skip[s.node] for s in sources):
            listed = ", ".join(f"{s.node}.{s.field}" for s in sources)
            raise GraphError(
                f"graph {graph!r}: input '{name}.{field}' is fed by several outputs ({listed}); "
                "an input takes one source unless the sources are alternative branches "
                "of a router (edges with when=...)"
            )
    optional = optional_inputs(node)
    return NodePlan(
        name=name,
        node=node,
        preds=tuple(src for src, _, _ in edges),
        conditions={src: data["when"] for src, _, data in edges},
        feeds={f: tuple(s) for f, s in feeds.items()},
        from_graph=tuple(f for f in node.inputs if f not in feeds),
        required=frozenset(f for f in node.inputs if f not in optional),
        converts=_converts(g, node, feeds),
    )


def _converts(g: nx.DiGraph, node: Node, feeds: Mapping[str, list[Source]]) -> dict[str, Field]:
    """The inputs fed by at least one output declared with another type."""
    converts: dict[str, Field] = {}
    for field_name, sources in feeds.items():
        target = node.inputs[field_name]
        for s in sources:
            if needs_conversion(node_of(g, s.node).outputs[s.field].annotation, target.annotation):
                converts[field_name] = target
                break
    return converts


def _graph_inputs(
    graph: str,
    g: nx.DiGraph,
    nodes: dict[str, NodePlan],
    declared: Mapping[str, Field] | None,
) -> tuple[dict[str, Field], frozenset[str]]:
    needed: dict[str, Field] = {}
    required: set[str] = set()
    for plan in nodes.values():
        for field_name in plan.from_graph:
            field = plan.node.inputs[field_name]
            _check_input(graph, plan, field, needed, declared)
            needed.setdefault(field_name, field)
            if field_name in plan.required:
                required.add(field_name)
    if declared is None:
        return needed, frozenset(needed) - required
    unused = [k for k in declared if k not in needed]
    if unused:
        raise GraphError(
            f"graph {graph!r} declares input(s) {', '.join(unused)} that feed no node; "
            f"unfed node inputs are: {', '.join(needed) or 'none'}"
        )
    return dict(declared), frozenset(declared) - required


def _check_input(
    graph: str,
    plan: NodePlan,
    field: Field,
    needed: dict[str, Field],
    declared: Mapping[str, Field] | None,
) -> None:
    where = f"graph {graph!r}: node {plan.name!r} ({plan.node.kind})"
    if declared is not None and field.name not in declared:
        valid = ", ".join(declared) or "none"
        raise GraphError(
            f"{where} needs input {field.name!r}, which no edge feeds and the graph does not "
            f"declare; declared graph inputs: {valid}; connect it from another node's output "
            "or add it to inputs=[...]"
        )
    other = declared[field.name] if declared is not None else needed.get(field.name)
    if other is not None and not compatible(other.annotation, field.annotation):
        raise GraphError(
            f"{where} takes input {field.name!r} as {field.type_name}, but the graph input "
            f"{field.name!r} is {other.type_name}"
        )


def _graph_outputs(
    graph: str,
    g: nx.DiGraph,
    order: tuple[str, ...],
    may_skip: dict[str, bool],
    declared: list[str] | None,
) -> tuple[dict[str, Field], dict[str, tuple[Source, ...]]]:
    if declared is None:
        sinks = [n for n in order if g.out_degree(n) == 0]
        found = [Source(node=n, field=f) for n in sinks for f in node_of(g, n).outputs]
    else:
        found = [s for entry in declared for s in _resolve_output(graph, g, entry)]
    sources: dict[str, list[Source]] = {}
    for s in found:
        sources.setdefault(s.field, []).append(s)
    for field, group in sources.items():
        if len(group) > 1 and not all(may_skip[s.node] for s in group):
            listed = ", ".join(f"{s.node}.{s.field}" for s in group)
            hint = "declare outputs=[...]" if declared is None else "pick one"
            raise GraphError(
                f"graph {graph!r}: output {field!r} is produced by several nodes ({listed}); "
                f"{hint} naming 'node.field' so each output name has one source"
            )
    fields = {
        f: dataclasses.replace(node_of(g, group[0].node).outputs[f], is_input=False)
        for f, group in sources.items()
    }
    return fields, {f: tuple(group) for f, group in sources.items()}


def _resolve_output(graph: str, g: nx.DiGraph, entry: str) -> list[Source]:
    node_name, dot, field = entry.rpartition(".")
    if dot:
        if node_name not in g:
            raise unknown_node(graph, g, node_name)
        if field not in node_of(g, node_name).outputs:
            raise field_error(graph, g, node_name, field, output=True)
        return [Source(node=node_name, field=field)]
    found = [Source(node=n, field=entry) for n in g.nodes if entry in node_of(g, n).outputs]
    if not found:
        valid = ", ".join(f"{n}.{f}" for n in g.nodes for f in node_of(g, n).outputs)
        raise GraphError(
            f"graph {graph!r} declares output {entry!r}, but no node produces it; "
            f"node outputs are: {valid or 'none'}"
        )
    return found
