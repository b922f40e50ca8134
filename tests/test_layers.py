"""The package's import structure: no cycles, and the lower layers never reach up.

Imports are read from the source (module level and inside functions alike;
those under ``TYPE_CHECKING`` are left out, since they never run). A cycle,
even one hidden in a function-level import, means two modules cannot be
understood or tested apart; this test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "rhizome": "rhizome",
    "rhizome.engine": "engine",
    "rhizome.nodes": "nodes",
    "rhizome.tools": "tools",
    "rhizome.optimizers": "optimizers",
}
# Layers that must not import from the ones named after them.
LOWER = ("rhizome.engine.client", "rhizome.engine.call")
FOUNDATIONS = ("errors", "context", "trace", "example", "slots")
HIGHER = (
    "rhizome.engine.graphs",
    "rhizome.engine.batches",
    "rhizome.nodes",
    "rhizome.optimizers",
    "rhizome.tools",
    "rhizome.cli",
    "rhizome.serving",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def _imports(modules: dict[str, Path]) -> nx.DiGraph:
    graph: nx.DiGraph = nx.DiGraph()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                targets = [alias.name for alias in node.names]
            for target in targets:
                # a module importing its own package's __init__ is not a dependency
                if target in modules and target != name and not name.startswith(target + "."):
                    graph.add_edge(name, target)
    return graph


def test_the_walker_reads_real_imports() -> None:
    graph = _imports(_modules())
    assert graph.has_edge("rhizome.engine.call.predictor", "rhizome.engine.call.run")
    assert graph.has_edge("rhizome.engine.graphs.graph", "rhizome.engine.graphs.walk")


def test_no_import_cycles() -> None:
    graph = _imports(_modules())
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_lower_layers_do_not_import_higher_ones() -> None:
    graph = _imports(_modules())
    lower = [
        name
        for name in graph
        if name.startswith(LOWER) or name in {f"rhizome.engine.{f}" for f in FOUNDATIONS}
    ]
    wrong = sorted(
        (name, target)
        for name in lower
        for target in graph.successors(name)
        if target.startswith(HIGHER)
    )
    assert not wrong, f"the LM client/call layer imports a higher layer: {wrong}"
