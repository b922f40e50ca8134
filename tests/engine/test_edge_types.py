"""Issue 15: a value crossing an edge between differently typed fields is converted or refused."""

from __future__ import annotations

from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.errors import GraphError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict


def double(n: int) -> int:
    return n * 2


def halve(x: float) -> float:
    assert type(x) is float
    return x / 2


def _text_to_int() -> Graph:
    return (
        Graph("g")
        .add("a", Predict("q -> n"))  # n is str: an LM answer
        .add("b", FunctionNode(double, outputs=["m"]))
        .connect("a", "b")
    )


async def test_a_str_output_into_an_int_input_is_converted() -> None:
    p = await _text_to_int().run(q="x", lm=FakeLM(["<n>21</n>"]))
    assert p["m"] == 42  # not "2121"
    assert p.trace.node("b").inputs == {"n": 21}


async def test_a_str_that_is_no_int_fails_the_receiving_node_clearly() -> None:
    with pytest.raises(NodeError) as exc:
        await _text_to_int().run(q="x", lm=FakeLM(["<n>twenty-one</n>"]))
    assert exc.value.node == "b"
    message = str(exc.value)
    assert "input 'n' expects int, but 'a.n' (declared str) got str 'twenty-one'" in message
    assert "declare 'a.n' as int" in message


async def test_int_into_float_is_converted() -> None:
    g = (
        Graph("g")
        .add("a", FunctionNode(double, outputs=["x"]))
        .add("b", FunctionNode(halve, outputs=["y"]))
        .connect("a", "b")
    )
    assert (await g.run(n=3))["y"] == 3.0


async def test_none_from_an_optional_output_does_not_reach_a_str_input() -> None:
    def maybe(q: str) -> dict[str, Any]:
        return {"note": None}

    g = (
        Graph("g")
        .add("a", FunctionNode(maybe, outputs={"note": str | None}))
        .add("b", Predict("note -> answer"))
        .connect("a", "b")
    )
    lm = FakeLM(["<answer>x</answer>"])
    with pytest.raises(NodeError, match=r"'a.note' \(declared str \| None\) got NoneType None"):
        await g.run(q="x", lm=lm)
    assert lm.calls == 0


def test_edges_between_equal_types_need_no_conversion() -> None:
    g = Graph("g").add("a", Predict("q -> n: int")).add("b", FunctionNode(double, outputs=["m"]))
    plan = g.connect("a", "b").validate().plan()
    assert dict(plan.nodes["b"].converts) == {}
    assert set(_text_to_int().validate().plan().nodes["b"].converts) == {"n"}


def test_what_can_never_fit_is_still_refused_when_wiring() -> None:
    g = Graph("g").add("a", Predict("q -> n: list[str]")).add("b", Predict("n: int -> z"))
    with pytest.raises(GraphError, match="incompatible"):
        g.connect("a", "b")
