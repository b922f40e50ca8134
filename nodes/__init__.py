"""Node kinds: LM reasoning patterns, retrieval, tools, functions, routers and loops."""

# Node kinds run on their own as one-node graphs: make sure the graph type is registered.
from rhizome.engine.graphs import graph as _graph  # noqa: F401

__all__: tuple[str, ...] = ()
