"""Graphs.

Nodes, the graph, its plan (where it is validated), the scheduler, type checks,
the one walk, parameters, saving and drawing.
"""

__all__: tuple[str, ...] = ()
