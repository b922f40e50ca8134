"""Router nodes: LM and function decisions, route_to conditions, branches in a graph."""

from __future__ import annotations

import typing

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError, NodeError, ParseError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict
from rhizome.nodes.router import Router, route_to


def branches(router: Router) -> Graph:
    g = Graph("branches")
    g.add("route", router)
    g.add("calc", FunctionNode(lambda question: f"calc:{question}", outputs=["answer"]))
    g.add("lookup", FunctionNode(lambda question: f"lookup:{question}", outputs=["answer"]))
    g.connect("route", "calc", when=route_to("math"))
    g.connect("route", "lookup", when=router.route_to("facts"))
    return g


async def test_function_router_picks_one_branch_and_skips_the_other() -> None:
    def decide(question: str) -> str:
        return "math" if any(c.isdigit() for c in question) else "facts"

    g = branches(Router(decide, routes=["math", "facts"]))
    p = await g.run(question="2+2")
    assert p == {"answer": "calc:2+2"}
    assert p.trace is not None
    assert [r.node for r in p.trace.records] == ["route", "calc"]
    assert p.trace.node("route").outputs == {"route": "math"}
    p = await g.run(question="capital of France")
    assert p == {"answer": "lookup:capital of France"}


async def test_async_function_router_is_awaited() -> None:
    async def decide(question: str) -> str:
        return "facts"

    node = Router(decide, routes=["math", "facts"])
    assert await node.forward(question="x") == {"route": "facts"}


async def test_function_returning_an_unknown_route_fails_naming_the_routes() -> None:
    g = branches(Router(lambda question: "poetry", routes=["math", "facts"]))
    with pytest.raises(NodeError, match="returned 'poetry'; it must return one of: math, facts"):
        await g.run(question="x")


async def test_lm_router_constrains_the_route_to_the_names() -> None:
    replies = {"2+2": "<route>\nmath\n</route>", "capital": "<route>FACTS</route>"}

    def reply(request: LMRequest, sample: int) -> str:
        text = str(request.messages[-1]["content"])
        return next(r for key, r in replies.items() if key in text)

    router = Router("question", routes=["math", "facts"])
    assert typing.get_args(router.outputs["route"].annotation) == ("math", "facts")
    g = branches(router)
    lm = FakeLM(reply)
    assert (await g.run(question="2+2", lm=lm)) == {"answer": "calc:2+2"}
    p = await g.run(question="capital of Peru", lm=lm)
    assert p == {"answer": "lookup:capital of Peru"}
    assert p.trace is not None
    assert p.trace.lm_calls("route")[0].outputs == {"route": "facts"}
    assert "exactly one of: math, facts" in str(lm.requests[0].messages[0]["content"])
    assert dict(g.named_predictors()) == {"route": router.predictor}


async def test_lm_router_rejects_a_route_outside_the_list() -> None:
    node = Router(
        "question -> route", routes=["math", "facts"], lm=FakeLM(["<route>poetry</route>"])
    )
    with pytest.raises(ParseError):
        await node.forward(question="x")


def test_signature_route_output_is_retyped_and_other_outputs_kept() -> None:
    node = Router("question -> reasoning, route", routes=["a", "b"], instruction="Pick.")
    assert list(node.outputs) == ["reasoning", "route"]
    assert node.outputs["route"].annotation == typing.Literal["a", "b"]
    assert node.predictor is not None
    assert node.predictor.instruction == "Pick."
    added = Router("question -> topic", routes=["a", "b"])
    assert list(added.outputs) == ["topic", "route"]


def test_route_to_conditions() -> None:
    cond = route_to("a", "b")
    assert cond({"route": "a"})
    assert cond({"route": "b"})
    assert not cond({"route": "c"})
    assert not cond({})
    assert route_to("x", field="kind")({"kind": "x"})
    assert repr(route_to("b", "a")) == "route_to('a', 'b')"
    with pytest.raises(ConfigError, match="at least one route name"):
        route_to()


def test_router_route_to_checks_the_name() -> None:
    node = Router(lambda q: "a", routes=["a", "b"])
    with pytest.raises(ConfigError, match=r"unknown route.*'c'.*routes are: a, b"):
        node.route_to("c")


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (["only"], "at least two"),
        ("ab", "not the string"),
        (["a", "a"], "unique"),
    ],
)
def test_bad_routes_are_refused(routes: typing.Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Router(lambda q: "a", routes=routes)


def test_function_router_inputs_come_from_parameters_or_are_given() -> None:
    assert list(Router(lambda question, context: "a", routes=["a", "b"]).inputs) == [
        "question",
        "context",
    ]
    assert list(Router(len, routes=["a", "b"], inputs=["x"]).inputs) == ["x"]
    assert list(Router(lambda q: "a", routes=["a", "b"]).named_predictors()) == []


async def test_router_copy_is_independent() -> None:
    node = Router("question", routes=["a", "b"])
    twin = node.copy()
    assert twin.predictor is not None
    assert node.predictor is not None
    twin.predictor.instruction = "changed"
    assert node.predictor.instruction != "changed"
    g = Graph().add("r", node).add("p", Predict("question -> answer"))
    g.connect("r", "p", when=route_to("a"))
    assert list(dict(g.named_predictors())) == ["r", "p"]
