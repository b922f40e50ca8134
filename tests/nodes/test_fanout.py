"""FanOut: one branch per item, bounded concurrency, results in order, failures captured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import ConfigError, NodeError
from rhizome.engine.graphs.checkpoint import SQLiteCheckpoint
from rhizome.engine.graphs.durable import RunWaiting, interrupt
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.fanout import FanOut
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict
from tests.server import OpenAIServer


class Slow:
    """Squares a number after a delay that shrinks with it; counts concurrency and calls."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.fail = set(fail)
        self.running = 0
        self.most = 0
        self.calls: list[int] = []

    async def __call__(self, x: int, offset: int = 0) -> int:
        self.calls.append(x)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await anyio.sleep(0.002 * (10 - x))  # later items finish first
            if x in self.fail:
                raise ValueError(f"no square for {x}")
            return x * x + offset
        finally:
            self.running -= 1


async def test_results_come_back_in_item_order_with_failures_captured() -> None:
    fn = Slow(fail=frozenset({3}))
    g = Graph("squares").add(
        "sq", FanOut(FunctionNode(fn, outputs=["y"]), over="xs", item="x", concurrency=3)
    )
    result = await g.run(xs=list(range(8)), offset=1)
    assert result["y"] == [1, 2, 5, None, 17, 26, 37, 50]
    errors = result["errors"]
    assert errors[3] == {"type": "ValueError", "message": "no square for 3"}
    assert [e is None for e in errors] == [i != 3 for i in range(8)]
    assert fn.most == 3
    assert g.nodes["sq"].inputs.keys() == {"offset", "xs"}


async def test_capture_errors_false_fails_the_node_and_names_the_item() -> None:
    fn = Slow(fail=frozenset({2}))
    fan = FanOut(FunctionNode(fn, outputs=["y"]), over="xs", item="x", capture_errors=False)
    with pytest.raises(NodeError, match="item 1 of 'xs' failed: ValueError: no square for 2"):
        await Graph("g").add("sq", fan).run(xs=[1, 2, 3])


async def test_a_sub_graph_per_item_with_an_lm(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"note": "N:' + body["messages"][-1]["content"][-5:] + '"}'
    per_item = Graph("per_item").add("note", Predict("topic, passage -> note"))
    g = Graph("notes").add("fan", FanOut(per_item, over="passages", item="passage"))
    result = await g.run(topic="t", passages=["aaaaa", "bbbbb", "ccccc"], lm=lm)
    assert len(result["note"]) == 3
    assert server.request_count == 3
    assert "fan.note.instruction" in g.named_parameters()
    assert all(e is None for e in result["errors"])


async def test_each_finished_item_is_checkpointed(tmp_path: Path) -> None:
    fn = Slow(fail=frozenset({4}))
    build = lambda: Graph("g").add(  # noqa: E731
        "sq",
        FanOut(
            FunctionNode(fn, outputs=["y"]),
            over="xs",
            item="x",
            capture_errors=False,
            concurrency=1,
        ),
    )
    store = SQLiteCheckpoint(tmp_path / "c.sqlite")
    with pytest.raises(NodeError):
        await build().run(xs=[1, 2, 3, 4, 5], checkpoint=store, run_id="f")
    assert fn.calls == [1, 2, 3, 4]
    fn.fail.clear()
    fn.calls.clear()
    result = await build().run(checkpoint=store, run_id="f")
    assert fn.calls == [4, 5], "items 1-3 were restored"
    assert result["y"] == [1, 4, 9, 16, 25]


async def test_an_item_that_asks_lets_the_others_finish(tmp_path: Path) -> None:
    calls: list[str] = []

    def check(name: str) -> str:
        calls.append(name)
        return interrupt(f"is {name} ok?") if name == "b" else "fine"

    g = Graph("g").add(
        "fan", FanOut(FunctionNode(check, outputs=["verdict"]), over="names", item="name")
    )
    store = tmp_path / "c.sqlite"
    with pytest.raises(RunWaiting, match="is b ok"):
        await g.run(names=["a", "b", "c"], checkpoint=store, run_id="q")
    assert sorted(calls) == ["a", "b", "c"]
    calls.clear()
    result = await g.resume("q", "so-so", checkpoint=store)
    assert calls == ["b"]
    assert result["verdict"] == ["fine", "so-so", "fine"]


def test_config_errors() -> None:
    node = FunctionNode(lambda a, b: a, outputs=["y"])
    with pytest.raises(ConfigError, match="say which input"):
        FanOut(node, over="items")
    with pytest.raises(ConfigError, match="has no such input"):
        FanOut(node, over="items", item="c")
    with pytest.raises(ConfigError, match="concurrency >= 1"):
        FanOut(node, over="items", item="a", concurrency=0)
    with pytest.raises(ConfigError, match="already has an input 'b'"):
        FanOut(node, over="b", item="a")


async def test_a_list_input_is_required() -> None:
    g = Graph("g").add("fan", FanOut(FunctionNode(lambda a: a, outputs=["y"]), over="xs"))
    with pytest.raises(NodeError, match="must be a list of items"):
        await g.run(xs="abc")
    result: Any = await g.run(xs=[])
    assert result["y"] == []
