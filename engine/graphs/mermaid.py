"""Draw a graph as a Mermaid flowchart.

Nodes are labelled with their name and kind, edges with their field mappings
(dotted for router edges), graph inputs and outputs appear as two rounded
nodes, and every node that contains others (a nested graph, a loop, a
sampling wrapper) becomes a subgraph holding what the walk finds inside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rhizome.engine.graphs.walk import graphs, visits

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = ("to_mermaid",)


# Node ids all start with "n_", so these never collide with a node's id.
_INPUTS = "graph_inputs"
_OUTPUTS = "graph_outputs"


def to_mermaid(graph: Graph) -> str:
    """The graph as Mermaid ``flowchart`` text."""
    lines = ["flowchart TD"]
    ins, outs = graph.inputs, graph.outputs
    lines.append(f'    {_INPUTS}(["inputs: {_text(", ".join(ins) or "none")}"])')
    _body(graph, lines)
    lines.append(f'    {_OUTPUTS}(["outputs: {_text(", ".join(outs) or "none")}"])')
    _input_edges(graph, lines)
    _output_edges(graph, lines)
    return "\n".join(lines) + "\n"


def _id(prefix: str, name: str) -> str:
    # Prefixing keeps Mermaid keywords such as `end` usable as node names.
    return "n_" + (prefix + name).replace(".", "__")


def _text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _body(graph: Graph, lines: list[str]) -> None:
    """Every node at every depth, containers as subgraphs, then every graph's edges."""
    drawn: dict[str, int] = {}
    open_paths: list[str] = []
    for visit in visits(graph):
        if not visit.depth:
            continue
        while open_paths and not _inside(visit.path, open_paths[-1]):
            open_paths.pop()
            lines.append(f"{_pad(len(open_paths))}end")
        pad = _pad(len(open_paths))
        # A transparent child shares its container's path; a digit keeps its id apart
        # (node names are identifiers, so no path segment starts with one).
        repeat = drawn.get(visit.path, 0)
        drawn[visit.path] = repeat + 1
        node_id = _id("", visit.path) + (f"__{repeat}" if repeat else "")
        label = _text(visit.path.rpartition(".")[2])
        if any(True for _ in visit.node.children()):
            lines.append(f'{pad}subgraph {node_id}["{label} ({visit.node.kind})"]')
            open_paths.append(visit.path)
        else:
            lines.append(f'{pad}{node_id}["{label}<br/><i>{visit.node.kind}</i>"]')
    lines += [f"{_pad(depth)}end" for depth in reversed(range(len(open_paths)))]
    for path, inner in graphs(graph):
        prefix = f"{path}." if path else ""
        for a, b, mappings, when in inner.edges:
            label = ", ".join(x if x == y else f"{x} → {y}" for x, y in mappings)
            if when is not None:
                label = f"when {label}".strip()
            arrow = "-.->" if when is not None else "-->"
            text = f'|"{_text(label)}"|' if label else ""
            lines.append(f"    {_id(prefix, a)} {arrow}{text} {_id(prefix, b)}")


def _inside(path: str, container: str) -> bool:
    """Whether ``path`` is ``container`` itself (a transparent child) or below it."""
    return path == container or path.startswith(container + ".")


def _pad(depth: int) -> str:
    return "    " * (depth + 1)


def _input_edges(graph: Graph, lines: list[str]) -> None:
    fed = {(b, y) for _, b, mappings, _ in graph.edges for _, y in mappings}
    for name, node in graph.nodes.items():
        fields = [f for f in node.inputs if (name, f) not in fed and f in graph.inputs]
        if fields:
            label = _text(", ".join(fields))
            lines.append(f'    {_INPUTS} -->|"{label}"| {_id("", name)}')


def _output_edges(graph: Graph, lines: list[str]) -> None:
    plan = graph.plan()
    by_node: dict[str, list[str]] = {}
    for out, sources in plan.output_sources.items():
        for s in sources:
            by_node.setdefault(s.node, []).append(
                s.field if s.field == out else f"{s.field} → {out}"
            )
    for name, fields in by_node.items():
        label = _text(", ".join(fields))
        lines.append(f'    {_id("", name)} -->|"{label}"| {_OUTPUTS}')
