"""Loop: bounded repetition of a body graph, with carry, accumulate and until."""

from __future__ import annotations

from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict
from rhizome.nodes.retrieve import Retrieve
from rhizome.tools.retrieval.retrievers import InMemoryRetriever

DOCS = [
    "Ada Lovelace was born in London.",
    "London is the capital of England.",
    "The capital of England has the River Thames.",
    "Paris is the capital of France.",
]


def hop_body() -> Graph:
    body = Graph("hop")
    body.add("query", Predict("context: list[str], question -> query"))
    body.add("search", Retrieve(InMemoryRetriever(DOCS), k=1, exclude="context"))
    return body.connect("query", "search")


def queries(request: LMRequest, sample: int) -> str:
    """The query model: asks for what the context does not cover yet."""
    prompt = str(request.messages[-1]["content"])
    if "<answer>" in str(request.messages[0]["content"]):
        return "<answer>the Thames</answer>"
    if "capital of England" in prompt:
        return "<query>River Thames capital</query>"
    if "born in London" in prompt:
        return "<query>London capital</query>"
    return "<query>Ada Lovelace born</query>"


async def test_accumulate_gathers_new_passages_each_hop_and_records_iterations() -> None:
    loop = Loop(hop_body(), max_iters=3, accumulate={"passages": "context"})
    assert set(loop.inputs) == {"context", "question"}
    assert loop.optional_inputs >= {"context"}
    assert list(loop.outputs) == ["passages", "context"]
    g = Graph("multihop").add("hops", loop)
    g.add("answer", Predict("context: list[str], question -> answer"))
    g.connect("hops.context", "answer.context")
    p = await g.run(
        question="Which river runs through Ada Lovelace's birthplace?", lm=FakeLM(queries)
    )
    assert p == {"answer": "the Thames"}
    assert p.trace is not None
    hops = p.trace.node("hops")
    assert hops.outputs["context"] == DOCS[:3]
    assert hops.outputs["passages"] == [DOCS[2]]
    inner = [(r.node, r.iteration) for r in p.trace.records if r.node.startswith("hops.")]
    assert inner == [
        ("hops.query", 0),
        ("hops.search", 0),
        ("hops.query", 1),
        ("hops.search", 1),
        ("hops.query", 2),
        ("hops.search", 2),
    ]
    assert p.trace.node("hops").iteration is None
    assert p.trace.node("answer").iteration is None
    assert [c.predictor for c in p.trace.lm_calls()] == ["hops.query"] * 3 + ["answer"]
    assert p.trace.node("hops.search").parents == ["hops.query", "hops"]
    assert [p for p, _ in g.named_predictors()] == ["hops.query", "answer"]


async def test_until_stops_early_and_carry_feeds_the_next_iteration() -> None:
    body = Graph("step").add(
        "inc",
        FunctionNode(lambda n: {"n": n + 1, "log": [n]}, outputs={"n": int, "log": list[int]}),
    )
    assert list(body.inputs) == ["n"]
    seen: list[dict[str, Any]] = []

    def until(out: dict[str, Any]) -> bool:
        seen.append(out)
        return bool(out["n"] >= 3)

    loop = Loop(body, max_iters=10, until=until, carry={"n": "n"})
    g = Graph("g").add("loop", loop)
    p = await g.run(n=0)
    assert p == {"n": 3, "log": [2]}
    assert len(seen) == 3
    assert p.trace is not None
    assert [r.iteration for r in p.trace.records if r.node == "loop.inc"] == [0, 1, 2]


async def test_max_iters_bounds_the_loop_and_accumulate_dedupes_scalars() -> None:
    body = Graph("b").add(
        "f",
        FunctionNode(
            lambda seen, word: {"word": word, "found": f"  {word}  "},
            outputs={"word": str, "found": str},
        ),
    )
    loop = Loop(body, max_iters=3, accumulate={"found": "seen"})
    out = await loop.forward(word="x", seen=["x"])
    assert out == {"word": "x", "found": "  x  ", "seen": ["x"]}


async def test_inner_failure_names_the_inner_node_and_tags_its_iteration() -> None:
    calls = {"n": 0}

    def boom(n: int) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("second time fails")
        return n

    body = Graph("b").add("f", FunctionNode(boom, outputs=["n"]))
    g = Graph("g").add("loop", Loop(body, max_iters=3, carry={"n": "n"}))
    with pytest.raises(NodeError, match="second time fails") as info:
        await g.run(n=1)
    assert info.value.node == "loop.f"


async def test_loop_predictors_are_tunable_through_the_outer_graph() -> None:
    g = Graph("g").add("hops", Loop(hop_body(), max_iters=2, accumulate={"passages": "context"}))
    g.set_parameters({"hops.query.instruction": "Write a search query."})
    loop = g.nodes["hops"]
    assert isinstance(loop, Loop)
    query = loop.body.nodes["query"]
    assert isinstance(query, Predict)
    assert query.predictor.instruction == "Write a search query."
    twin = g.copy()
    twin.set_parameters({"hops.query.instruction": "changed"})
    assert query.predictor.instruction == "Write a search query."
    lm = FakeLM(queries)
    p = await twin.run(question="Ada?", lm=lm)
    assert "context" in p
    assert str(lm.requests[0].messages[0]["content"]).startswith("changed")


def test_config_errors_list_the_valid_fields() -> None:
    with pytest.raises(ConfigError, match="no output 'nope'; its outputs are: passages"):
        Loop(hop_body(), max_iters=2, accumulate={"nope": "context"})
    with pytest.raises(ConfigError, match="no input 'ctx'; its inputs are: context, question"):
        Loop(hop_body(), max_iters=2, carry={"passages": "ctx"})
    with pytest.raises(ConfigError, match="max_iters >= 1"):
        Loop(hop_body(), max_iters=0)
    with pytest.raises(ConfigError, match="needs a Graph"):
        Loop(Predict("q -> a"), max_iters=1)  # type: ignore[arg-type]
