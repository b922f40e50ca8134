"""End to end: LM node -> Python retrieval -> LM node against a real HTTP server.

The graph runs sync, async and as a batch of 1,000 examples at concurrency 64;
every request the server received is accounted for in the traces.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict

pytestmark = pytest.mark.slow

CORPUS = {f"topic{i}": f"fact about topic{i}" for i in range(50)}


def retrieve(query: str, k: int = 2) -> list[str]:
    """A tiny keyword retriever (runs in a worker thread)."""
    hits = [text for key, text in CORPUS.items() if key in query.split()]
    return (hits or ["nothing found"])[:k]


def respond(body: dict[str, Any]) -> str:
    """Answer as the JSON adapter asks, echoing the input so results can be checked."""
    schema = body["response_format"]["json_schema"]["name"]
    prompt = str(body["messages"][-1]["content"])
    if schema == "query":
        topic = re.findall(r"topic\d+", prompt)[-1]
        return json.dumps({"query": f"search {topic}"})
    fact = re.findall(r"fact about (topic\d+)", prompt)
    return json.dumps({"answer": f"answer: {fact[-1] if fact else 'none'}"})


def rag() -> Graph:
    g = Graph("rag")
    g.add("write_query", Predict("question -> query"))
    g.add("retrieve", FunctionNode(retrieve, outputs=["passages"]))
    g.add("answer", Predict("passages: list[str], question -> answer"))
    return g.connect("write_query", "retrieve").connect("retrieve", "answer")


def check(prediction: Any, topic: str) -> None:
    assert prediction["answer"] == f"answer: {topic}"
    trace = prediction.trace
    assert [r.node for r in trace.records] == ["write_query", "retrieve", "answer"]
    assert trace.node("retrieve").inputs == {"query": f"search {topic}"}
    assert trace.node("retrieve").outputs == {"passages": [f"fact about {topic}"]}
    assert trace.node("answer").parents == ["retrieve"]
    assert [c.predictor for c in trace.lm_calls()] == ["write_query", "answer"]
    assert trace.usage()["calls"] == 2
    assert "answer (Predict" in trace.format()


async def test_async_run(server: Any, lm: Any) -> None:
    server.responder = respond
    prediction = await rag().run(question="Tell me about topic7", lm=lm)
    check(prediction, "topic7")
    assert server.request_count == 2


def test_sync_run(server: Any, lm: Any) -> None:
    server.responder = respond
    prediction = rag()(question="Tell me about topic3", lm=lm)
    check(prediction, "topic3")
    assert server.request_count == 2


async def test_batch_of_a_thousand(server: Any, lm: Any) -> None:
    server.responder = respond
    examples = [{"question": f"Tell me about topic{i % 50}", "id": i} for i in range(1000)]
    results = await rag().batch(examples, concurrency=64, lm=lm, progress=False)
    assert [r.index for r in results] == list(range(1000))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    for i, r in enumerate(results):
        check(r.prediction, f"topic{i % 50}")
    calls = sum(len(r.trace.lm_calls()) for r in results if r.trace)
    assert server.request_count == 2000 == calls
    assert json.loads(results[0].trace.to_json())["records"][0]["node"] == "write_query"
