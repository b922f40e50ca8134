"""FunctionNode: fields from signatures, sync/async calls, output mapping and errors."""

from __future__ import annotations

import threading
from typing import Any, TypedDict

import anyio
import anyio.lowlevel
import pydantic
import pytest

from rhizome.engine.errors import GraphError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode


class Found(TypedDict):
    passages: list[str]
    count: int


class Scored(pydantic.BaseModel):
    label: str
    score: float = pydantic.Field(description="between 0 and 1")


def search(query: str, k: int = 2) -> list[str]:
    return [f"{query}-{i}" for i in range(k)]


def test_inputs_come_from_parameters_and_hints() -> None:
    node = FunctionNode(search, outputs=["passages"])
    assert {n: f.annotation for n, f in node.inputs.items()} == {"query": str, "k": int}
    assert node.optional_inputs == frozenset({"k"})
    assert all(f.is_input for f in node.inputs.values())
    assert node.name == "search"
    assert node.kind == "FunctionNode"


def test_single_output_takes_the_return_annotation() -> None:
    node = FunctionNode(search, outputs=["passages"])
    assert node.outputs["passages"].annotation == list[str]
    assert node.outputs["passages"].is_input is False


def test_fields_are_read_only_views() -> None:
    node = FunctionNode(search, outputs=["passages"])
    with pytest.raises(TypeError):
        node.inputs["extra"] = node.inputs["query"]  # type: ignore[index]
    with pytest.raises(TypeError):
        node.outputs["extra"] = node.outputs["passages"]  # type: ignore[index]
    assert set(node.inputs) == {"query", "k"}
    assert set(node.outputs) == {"passages"}


def test_unannotated_parameters_are_any() -> None:
    node = FunctionNode(lambda a, b=1: a, outputs={"out": int})
    assert node.inputs["a"].annotation is Any
    assert node.outputs["out"].annotation is int


def test_typeddict_return_gives_outputs() -> None:
    def find(query: str) -> Found:
        return {"passages": [query], "count": 1}

    node = FunctionNode(find)
    assert {n: f.annotation for n, f in node.outputs.items()} == {
        "passages": list[str],
        "count": int,
    }


def test_pydantic_return_gives_outputs_and_is_unpacked() -> None:
    def score(text: str) -> Scored:
        return Scored(label=text, score=0.5)

    node = FunctionNode(score)
    assert node.outputs["score"].desc == "between 0 and 1"
    assert anyio.run(lambda: node.forward(text="x")) == {"label": "x", "score": 0.5}


def test_outputs_cannot_be_guessed_without_a_declaration() -> None:
    with pytest.raises(
        GraphError,
        match=r"FunctionNode\(search\): cannot tell its outputs; pass outputs=\['name'\]",
    ):
        FunctionNode(search)


def test_declared_inputs_must_match_parameters() -> None:
    with pytest.raises(GraphError, match="unknown: text; required but not declared: query"):
        FunctionNode(search, inputs=["text"], outputs=["p"])
    node = FunctionNode(lambda **kw: kw["x"], inputs={"x": int}, outputs=["y"])
    assert node.inputs["x"].annotation is int


def test_positional_only_parameters_are_rejected() -> None:
    def f(a: int, /) -> int:
        return a

    with pytest.raises(GraphError, match="positional-only"):
        FunctionNode(f, outputs=["b"])


async def test_sync_functions_run_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def where(x: int) -> int:
        seen.append(threading.get_ident())
        return x

    assert await FunctionNode(where, outputs=["y"]).forward(x=1) == {"y": 1}
    assert seen
    assert seen[0] != loop_thread


async def test_shared_limiter_bounds_sync_calls() -> None:
    limiter = anyio.CapacityLimiter(1)
    active = peak = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        threading.Event().wait(0.02)
        with lock:
            active -= 1
        return x

    g = Graph()
    for name in ("a", "b", "c"):
        g.add(name, FunctionNode(work, outputs=[f"y{name}"], limiter=limiter))
    assert await g.run(x=1) == {"ya": 1, "yb": 1, "yc": 1}
    assert peak == 1


async def test_async_functions_and_async_callables_are_awaited() -> None:
    async def afn(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + 1

    class Callable:
        async def __call__(self, x: int) -> int:
            return x + 2

    assert await FunctionNode(afn, outputs=["y"]).forward(x=1) == {"y": 2}
    node = FunctionNode(Callable(), outputs=["y"])
    assert node.is_async
    assert node.inputs["x"].annotation is int
    assert await node.forward(x=1) == {"y": 3}


async def test_dict_and_tuple_returns_map_to_several_outputs() -> None:
    pair = FunctionNode(lambda x: (x, -x), outputs=["pos", "neg"])
    assert await pair.forward(x=2) == {"pos": 2, "neg": -2}
    named = FunctionNode(lambda x: {"neg": -x, "pos": x, "extra": 0}, outputs=["pos", "neg"])
    assert await named.forward(x=2) == {"pos": 2, "neg": -2}


async def test_single_output_wraps_values_including_dicts() -> None:
    node = FunctionNode(lambda x: {"a": x}, outputs={"data": dict[str, int]})
    assert await node.forward(x=1) == {"data": {"a": 1}}
    already = FunctionNode(lambda x: {"data": x}, outputs=["data"])
    assert await already.forward(x=1) == {"data": 1}


async def test_missing_output_names_node_and_fields() -> None:
    def bad(x: int) -> dict[str, int]:
        return {"pos": x}

    g = Graph().add("split", FunctionNode(bad, outputs=["pos", "neg"]))
    with pytest.raises(NodeError) as info:
        await g.run(x=1)
    message = str(info.value)
    assert "node 'split' (FunctionNode) failed" in message
    assert "function 'bad' returned no neg: it returned keys pos" in message
    assert "declares outputs pos, neg" in message


async def test_non_mapping_for_several_outputs_is_an_error() -> None:
    node = FunctionNode(lambda x: [x], outputs=["a", "b"], name_hint="lister")
    with pytest.raises(
        TypeError, match=r"function 'lister' returned list.*declares 2 outputs \(a, b\)"
    ):
        await node.forward(x=1)


async def test_copy_shares_the_function() -> None:
    node = FunctionNode(search, outputs=["passages"], timeout=3)
    twin = node.copy()
    assert twin is not node
    assert twin.fn is node.fn
    assert twin.timeout == 3
    assert await twin.forward(query="q", k=1) == {"passages": ["q-0"]}
