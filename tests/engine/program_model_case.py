"""A program with every nesting kind, rebuilt identically in a test and in a fresh process.

``python -m tests.engine.program_model_case SAVED OUT`` builds :func:`program`,
loads ``SAVED`` with ``lms={"small": ..., "big": ...}``, runs it on
:data:`QUESTION` and writes :func:`snapshot` of it to ``OUT``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict
from rhizome.nodes.retrieve import Retrieve
from rhizome.nodes.router import Router, route_to
from rhizome.nodes.sampling import BestOfN
from rhizome.optimizers.ensemble import Ensemble
from rhizome.tools.retrieval.retrievers import InMemoryRetriever

DOCS = [
    "Ada Lovelace was born in London.",
    "London lies on the River Thames.",
    "Paris is the capital of France.",
]
QUESTION = "Which river runs through Ada Lovelace's birthplace?"

# Every node path the walk must find, wrappers and bodies sharing their container's path.
PATHS = {
    "route",
    "hops",
    "hops.query",
    "hops.search",
    "write",
    "write.answer",
    "check",
    "vote",
    "vote.p0",
    "vote.p1",
    "vote.combine",
}


def _outputs(request: LMRequest) -> list[str]:
    system = str(request.messages[0]["content"])
    section = system.split("Outputs:")[1].split("\n\n")[0]
    return re.findall(r"^- (\w+)", section, re.M)


def _reply(request: LMRequest, answer: str) -> str:
    values = {"route": "lookup", "query": "Ada Lovelace London river", "answer": answer}
    return "\n".join(
        f"<{name}>\n{values.get(name, 'yes')}\n</{name}>" for name in _outputs(request)
    )


def _enough(request: LMRequest) -> bool:
    user = str(request.messages[-1]["content"])
    return all(doc in user for doc in DOCS[:2])


def small_reply(request: LMRequest, sample: int) -> str:
    """The small model: half right at best, when both passages reached the answerer."""
    return _reply(request, "London" if _enough(request) else "wrong")


def big_reply(request: LMRequest, sample: int) -> str:
    """The big model: right when both passages reached the answerer, else half right."""
    return _reply(request, "the Thames" if _enough(request) else "London")


def score(example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Any = None) -> float:
    """1 for the river, 0.5 for the town: a gradient for the search to follow."""
    return {"the Thames": 1.0, "London": 0.5}.get(str(prediction.get("answer")), 0.0)


def lms() -> dict[str, FakeLM]:
    """Fresh LMs under the reference names a saved program uses."""
    return {"small": FakeLM(small_reply, name="small"), "big": FakeLM(big_reply, name="big")}


def program(*, iters: int = 1, wire_body: bool = True) -> Graph:
    """A router, a loop whose body holds a Retrieve, a sub-graph, BestOfN and an Ensemble."""
    body = Graph("hop")
    body.add("query", Predict("context: list[str], question -> query"))
    body.add("search", Retrieve(InMemoryRetriever(DOCS), k=1, exclude="context"))
    if wire_body:
        body.connect("query", "search")
    else:  # the same nodes, the query fed by a graph input instead of the predictor
        body.add("hint", Predict("question -> hint"))
    write = Graph("write").add("answer", Predict("context: list[str], question -> answer"))
    g = Graph("nested", outputs=["write.answer", "check.verdict", "vote.guess"])
    g.add("route", Router("question -> route", routes=["lookup", "direct"]))
    g.add("hops", Loop(body, max_iters=iters, accumulate={"passages": "context"}))
    g.add("write", write)
    g.add("check", BestOfN(Predict("answer -> verdict"), n=2, reward_fn=lambda i, o: 1.0))
    g.add("vote", Ensemble([Predict("question -> guess"), Predict("question -> guess")]))
    g.connect("route", "hops", when=route_to("lookup"))
    g.connect("hops.context", "write.context")
    return g.connect("write.answer", "check.answer")


def snapshot(graph: Graph, recorded: Sequence[FakeLM]) -> dict[str, Any]:
    """The parameters as saved (LMs by name) and every request each LM received, sorted."""
    from rhizome.engine.graphs.params import json_parameters

    return {
        "parameters": json_parameters(graph, lambda lm: lm.name),
        "requests": {
            lm.name: sorted(
                json.dumps([r.messages, r.temperature, r.n], ensure_ascii=False)
                for r in lm.requests
            )
            for lm in recorded
        },
    }


async def run_once(graph: Graph, default: FakeLM) -> None:
    """One run on the fixed question, ``default`` for nodes not bound to an LM."""
    await graph.run(question=QUESTION, lm=default)


def main(argv: list[str]) -> None:
    """Load the saved program onto a fresh graph, run it, write its snapshot."""
    saved, out = Path(argv[0]), Path(argv[1])
    given = lms()
    graph = program().load(saved, lms=given)
    anyio.run(run_once, graph, given["small"])
    out.write_text(json.dumps(snapshot(graph, list(given.values()))), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
