"""A program that asks a person inside a sub-graph inside a loop, for ``rhizome serve`` tests.

``rhizome serve tests.serve.human_case:build``: a draft is written, then each
of two rounds asks a reviewer (an ``AskHuman`` in the ``review`` sub-graph)
and revises the draft with the feedback.
"""

from __future__ import annotations

import json
from typing import Any

from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.human import AskHuman
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict


def build() -> Graph:
    """draft -> rounds (2 x: review.ask -> revise)."""
    review = Graph("review").add(
        "ask", AskHuman("Feedback on this draft?", inputs=["draft"], output="feedback")
    )
    body = Graph("round").add("review", review)
    body.add("revise", Predict("draft, feedback -> revised"))
    body.connect("review.feedback", "revise.feedback")
    g = Graph("reviewed")
    g.add("write", Predict("topic -> draft"))
    g.add("rounds", Loop(body, max_iters=2, carry={"revised": "draft"}))
    return g.connect("write.draft", "rounds.draft")


def responder(body: dict[str, Any]) -> str:
    """Deterministic replies: the draft names the topic, a revision adds the feedback."""
    user = str(body["messages"][-1]["content"])
    name = body["response_format"]["json_schema"]["name"]
    if name == "draft":
        topic = user.split("<topic>\n", 1)[1].split("\n</topic>", 1)[0]
        return json.dumps({"draft": f"about {topic}"})
    draft = user.split("<draft>\n", 1)[1].split("\n</draft>", 1)[0]
    feedback = user.split("<feedback>\n", 1)[1].split("\n</feedback>", 1)[0]
    return json.dumps({"revised": f"{draft} + {feedback}"})
