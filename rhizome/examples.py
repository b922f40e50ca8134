"""Example programs for the command line and the HTTP server.

Run one against any OpenAI-compatible server::

    export RHIZOME_BASE_URL=http://localhost:8000/v1 RHIZOME_MODEL_NAME=my-model
    rhizome run rhizome.examples:build --input '{"question": "What is the capital of France?"}'
    rhizome graph rhizome.examples:build_two_step

or on the embedded local model with ``--local``.
"""

from __future__ import annotations

from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict

__all__ = ("build", "build_two_step", "tidy")


def build() -> Graph:
    """One LM node: answer a question in a few words."""
    return Graph("qa", outputs=["answer"]).add(
        "answer",
        Predict(
            "question -> answer",
            instruction="Answer the question with a few words, without a sentence.",
        ),
    )


def tidy(question: str) -> str:
    """Normalise whitespace so equal questions look equal."""
    return " ".join(question.split())


def build_two_step() -> Graph:
    """Tidy the question, write a short reasoning, then answer from it."""
    return (
        Graph("qa_two_step", outputs=["answer"])
        .add("tidy", FunctionNode(tidy, outputs=["clean"]))
        .add("think", Predict("clean -> notes", instruction="Write brief notes on the question."))
        .add("answer", Predict("clean, notes -> answer", instruction="Answer in a few words."))
        .connect("tidy.clean", "think.clean")
        .connect("tidy.clean", "answer.clean")
        .connect("think.notes", "answer.notes")
    )
