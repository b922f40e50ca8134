"""Graphs the distributed tests run: built by module-level factories workers can import."""

from __future__ import annotations

from rhizome import Graph, Predict

__all__ = ("build", "two_step")


def build() -> Graph:
    """One LM node: question -> answer."""
    return Graph("echo", outputs=["answer"]).add("answer", Predict("question -> answer"))


def two_step() -> Graph:
    """Rewrite a question into a query, then answer the query: two LM nodes."""
    graph = Graph("two")
    graph.add("rewrite", Predict("question -> query"))
    graph.add("answer", Predict("query -> answer"))
    return graph.connect("rewrite", "answer")
