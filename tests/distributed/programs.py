"""Graphs the distributed tests run: built by module-level factories workers can import."""

from __future__ import annotations

from rhizome import Graph, Predict

__all__ = ("build",)


def build() -> Graph:
    """One LM node: question -> answer."""
    return Graph("echo", outputs=["answer"]).add("answer", Predict("question -> answer"))
