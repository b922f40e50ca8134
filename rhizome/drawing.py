"""A graph drawn as inline SVG, top-down in layers, with no renderer and no network.

The layout puts the graph inputs on top, each node one row below the deepest
node feeding it, and the outputs at the bottom; nodes in a row are ordered by
where their feeders sit (one barycentre pass), which keeps most edges from
crossing. Edges are labelled with the fields they carry, router edges are
dashed, and a node that nests others (a sub-graph, a loop body, a sampling
wrapper) is drawn as one box saying how many nodes it holds. For a Mermaid text instead,
see :meth:`Graph.to_mermaid <rhizome.engine.graphs.graph.Graph.to_mermaid>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from rhizome.engine.graphs.walk import walk

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = ("graph_svg",)


IN, OUT = "\x00inputs", "\x00outputs"
ROW_H, BOX_H, CHAR_W, PAD, MARGIN = 96, 40, 7.2, 28, 24


@dataclasses.dataclass(kw_only=True)
class _Box:
    title: str
    subtitle: str
    layer: int
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0
    rounded: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Edge:
    src: str
    dst: str
    label: str
    dashed: bool = False


def _edges(graph: Graph) -> list[_Edge]:
    out = []
    fed: set[tuple[str, str]] = set()
    for a, b, mappings, when in graph.edges:
        label = ", ".join(x if x == y else f"{x}→{y}" for x, y in mappings)
        out.append(_Edge(src=a, dst=b, label=label, dashed=when is not None))
        fed.update((b, y) for _, y in mappings)
    for name, node in graph.nodes.items():
        fields = [f for f in node.inputs if (name, f) not in fed and f in graph.inputs]
        if fields:
            out.append(_Edge(src=IN, dst=name, label=", ".join(fields)))
    producers: dict[str, list[str]] = {}
    for output in graph.outputs:
        makers = [n for n, node in graph.nodes.items() if output in node.outputs]
        if makers:
            producers.setdefault(makers[-1], []).append(output)
    out += [_Edge(src=n, dst=OUT, label=", ".join(f)) for n, f in producers.items()]
    return out


def _layers(graph: Graph, edges: Sequence[_Edge]) -> dict[str, int]:
    names = list(graph.nodes)
    layer = dict.fromkeys(names, 1)
    # Longest path from the inputs; graphs are acyclic, so len(names) rounds settle it.
    for _ in range(len(names)):
        changed = False
        for e in edges:
            if e.src in layer and e.dst in layer and layer[e.dst] <= layer[e.src]:
                layer[e.dst] = layer[e.src] + 1
                changed = True
        if not changed:
            break
    layer[IN] = 0
    layer[OUT] = max(layer.values(), default=0) + 1
    return layer


def _boxes(graph: Graph, layer: dict[str, int]) -> dict[str, _Box]:
    boxes = {IN: _Box(title="inputs", subtitle=", ".join(graph.inputs), layer=0, rounded=True)}
    for name, node in graph.nodes.items():
        kind = "Graph" if node.wires_children else node.kind
        # the one walk; transparent children (a loop body, a wrapped node) share a path
        inside = len({path for path, _ in walk(node) if path})
        subtitle = f"{kind} · {inside} inside" if inside else kind
        boxes[name] = _Box(title=name, subtitle=subtitle, layer=layer[name])
    boxes[OUT] = _Box(
        title="outputs", subtitle=", ".join(graph.outputs), layer=layer[OUT], rounded=True
    )
    for box in boxes.values():
        box.width = max(len(box.title), len(box.subtitle)) * CHAR_W + 2 * PAD
    return boxes


def _place(boxes: dict[str, _Box], edges: Sequence[_Edge]) -> tuple[float, float]:
    rows: dict[int, list[str]] = {}
    for name, box in boxes.items():
        rows.setdefault(box.layer, []).append(name)
    width = max(sum(boxes[n].width + MARGIN for n in row) for row in rows.values()) + MARGIN
    feeders: dict[str, list[str]] = {}
    for e in edges:
        feeders.setdefault(e.dst, []).append(e.src)
    for index in sorted(rows):
        row = rows[index]
        if index > 0:  # barycentre: order a row by the mean x of its feeders
            row.sort(key=lambda n: _mean([boxes[f].x for f in feeders.get(n, [])], default=0.0))
        used = sum(boxes[n].width for n in row) + MARGIN * (len(row) - 1)
        x = (width - used) / 2
        for name in row:
            box = boxes[name]
            box.x, box.y = x + box.width / 2, MARGIN + index * ROW_H
            x += box.width + MARGIN
    height = MARGIN * 2 + max(rows) * ROW_H + BOX_H
    return width, height


def _mean(values: Sequence[float], *, default: float) -> float:
    return sum(values) / len(values) if values else default


def graph_svg(graph: Graph) -> str:
    """The graph as an ``<svg>`` element (layered, top-down)."""
    edges = _edges(graph)
    boxes = _boxes(graph, _layers(graph, edges))
    width, height = _place(boxes, edges)
    # Room on the right for edges that bow around rows, and their labels.
    for e in edges:
        a, b = boxes[e.src], boxes[e.dst]
        if _bow(a, b):
            reach = (a.x + b.x) / 2 + _bow(a, b) * 0.75 + 4 + len(e.label) * CHAR_W + MARGIN
            width = max(width, reach)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" viewBox="0 0 {width:.0f} '
        f'{height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="graph {escape(graph.name)}">',
        _GRAPH_STYLE,
    ]
    parts += [_edge_svg(e, boxes[e.src], boxes[e.dst]) for e in edges]
    parts += [_box_svg(box) for box in boxes.values()]
    parts.append("</svg>")
    return "\n".join(parts)


_GRAPH_STYLE = """<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5"
 markerWidth="7" markerHeight="7" orient="auto-start-reverse">
<path d="M0,0 L10,5 L0,10 z" fill="#868e96"/></marker></defs>
<style>
.graph text{font:12px system-ui,sans-serif;fill:#212529}
.graph .sub{font-size:11px;fill:#495057;font-style:italic}
.graph .node{fill:#e7f5ff;stroke:#1c7ed6}
.graph .io{fill:#f8f9fa;stroke:#868e96}
.graph .edge{fill:none;stroke:#868e96;stroke-width:1.4}
.graph .routed{stroke-dasharray:5 4}
.graph .label{font-size:10.5px;fill:#495057}
</style>"""


def _box_svg(box: _Box) -> str:
    cls = "io" if box.rounded else "node"
    radius = BOX_H / 2 if box.rounded else 6
    left, top = box.x - box.width / 2, box.y
    return (
        f'<g><rect class="{cls}" x="{left:.1f}" y="{top:.1f}" width="{box.width:.1f}" '
        f'height="{BOX_H}" rx="{radius:.0f}"/>'
        f'<text x="{box.x:.1f}" y="{top + 17:.1f}" text-anchor="middle">{escape(box.title)}</text>'
        f'<text class="sub" x="{box.x:.1f}" y="{top + 32:.1f}" text-anchor="middle">'
        f"{escape(box.subtitle)}</text></g>"
    )


def _bow(a: _Box, b: _Box) -> float:
    return 0.0 if b.layer - a.layer <= 1 else max(a.width, b.width) * 0.75


def _edge_svg(edge: _Edge, a: _Box, b: _Box) -> str:
    x1, y1, x2, y2 = a.x, a.y + BOX_H, b.x, b.y
    mid = (y1 + y2) / 2
    # An edge skipping rows bows out to the right, so it does not run under the boxes between.
    bow = _bow(a, b)
    c1, c2 = f"{x1 + bow:.1f},{mid:.1f}", f"{x2 + bow:.1f},{mid:.1f}"
    path = f"M{x1:.1f},{y1:.1f} C{c1} {c2} {x2:.1f},{y2:.1f}"
    cls = "edge routed" if edge.dashed else "edge"
    label = ""
    if edge.label:
        label = (
            f'<text class="label" x="{(x1 + x2) / 2 + bow * 0.75 + 4:.1f}" y="{mid:.1f}">'
            f"{escape(edge.label)}</text>"
        )
    return f'<g><path class="{cls}" d="{path}" marker-end="url(#arrow)"/>{label}</g>'
