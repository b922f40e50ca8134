"""Draw a graph as a Mermaid flowchart.

Nodes are labelled with their name and kind, edges with their field mappings
(dotted for router edges), graph inputs and outputs appear as two rounded
nodes, and nested graphs become subgraphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rhizome.engine.graph import Graph

# Node ids all start with "n_", so these never collide with a node's id.
_INPUTS = "graph_inputs"
_OUTPUTS = "graph_outputs"


def to_mermaid(graph: Graph) -> str:
    """The graph as Mermaid ``flowchart`` text."""
    lines = ["flowchart TD"]
    ins, outs = graph.inputs, graph.outputs
    lines.append(f'    {_INPUTS}(["inputs: {_text(", ".join(ins) or "none")}"])')
    _body(graph, "", lines, "    ")
    lines.append(f'    {_OUTPUTS}(["outputs: {_text(", ".join(outs) or "none")}"])')
    _input_edges(graph, lines)
    _output_edges(graph, lines)
    return "\n".join(lines) + "\n"


def _id(prefix: str, name: str) -> str:
    # Prefixing keeps Mermaid keywords such as `end` usable as node names.
    return "n_" + (prefix + name).replace(".", "__")


def _text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _body(graph: Graph, prefix: str, lines: list[str], pad: str) -> None:
    from rhizome.engine.graph import Graph

    for name, node in graph.nodes.items():
        if isinstance(node, Graph):
            lines.append(f'{pad}subgraph {_id(prefix, name)}["{_text(name)} (Graph)"]')
            _body(node, f"{prefix}{name}.", lines, pad + "    ")
            lines.append(f"{pad}end")
        else:
            lines.append(f'{pad}{_id(prefix, name)}["{_text(name)}<br/><i>{node.kind}</i>"]')
    for a, b, mappings, when in graph.edges:
        label = ", ".join(x if x == y else f"{x} → {y}" for x, y in mappings)
        if when is not None:
            label = f"when {label}".strip()
        arrow = "-.->" if when is not None else "-->"
        text = f'|"{_text(label)}"|' if label else ""
        lines.append(f"{pad}{_id(prefix, a)} {arrow}{text} {_id(prefix, b)}")


def _input_edges(graph: Graph, lines: list[str]) -> None:
    fed = {(b, y) for _, b, mappings, _ in graph.edges for _, y in mappings}
    for name, node in graph.nodes.items():
        fields = [f for f in node.inputs if (name, f) not in fed and f in graph.inputs]
        if fields:
            label = _text(", ".join(fields))
            lines.append(f'    {_INPUTS} -->|"{label}"| {_id("", name)}')


def _output_edges(graph: Graph, lines: list[str]) -> None:
    plan = graph._validated()
    by_node: dict[str, list[str]] = {}
    for out, sources in plan.output_sources.items():
        for s in sources:
            by_node.setdefault(s.node, []).append(
                s.field if s.field == out else f"{s.field} → {out}"
            )
    for name, fields in by_node.items():
        label = _text(", ".join(fields))
        lines.append(f'    {_id("", name)} -->|"{label}"| {_OUTPUTS}')
