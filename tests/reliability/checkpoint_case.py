"""A 5-node program with a loop, run in a child process that a test kills mid-run.

``python -m tests.reliability.checkpoint_case URL STORE RUN_ID`` runs it against
the test server at ``URL`` with its checkpoint in the SQLite file ``STORE`` and
prints the outputs as JSON. :func:`responder` answers its LM calls
deterministically, so an interrupted and resumed run can be compared with one
that ran straight through.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import anyio

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict

_FIELD = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)


def build() -> Graph:
    """plan -> hops (a 3-iteration loop) -> draft -> check -> final."""
    body = Graph("hop").add("hop", Predict("query -> note, next_query"))
    g = Graph("researcher")
    g.add("plan", Predict("question -> query"))
    g.add("hops", Loop(body, max_iters=3, carry={"next_query": "query"}))
    g.add("draft", Predict("question, note -> draft"))
    g.add("check", FunctionNode(lambda draft: len(draft), outputs={"length": int}))
    g.add("final", Predict("draft, length: int -> answer"))
    g.connect("plan", "hops").connect("hops.note", "draft.note").connect("draft", "check")
    return g.connect("draft", "final").connect("check", "final")


def fields(body: dict[str, Any]) -> dict[str, str]:
    """The input fields of a request, read from its user message."""
    return dict(_FIELD.findall(str(body["messages"][-1]["content"])))


def kind(body: dict[str, Any]) -> str:
    """Which predictor sent the request: its output fields' names."""
    return str(body["response_format"]["json_schema"]["name"])


def responder(body: dict[str, Any]) -> str:
    """A reply that depends only on the request, so every run gives the same outputs."""
    given, name = fields(body), kind(body)
    if name == "query":
        reply = {"query": f"q({given['question']})"}
    elif name == "note_next_query":
        reply = {"note": f"note on {given['query']}", "next_query": given["query"] + "+"}
    elif name == "draft":
        reply = {"draft": f"draft from {given['note']}"}
    else:
        reply = {"answer": f"{given['draft']} [{given['length']} chars]"}
    return json.dumps(reply)


async def main(url: str, store: str, run_id: str) -> None:
    lm = OpenAILM(model="test-model", base_url=url, cache=None, backoff=0.01)
    try:
        result = await build().run(
            question="why?", lm=lm, checkpoint=store, run_id=run_id, durability="safe"
        )
    finally:
        await lm.aclose()
    print(json.dumps(dict(result)), flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
