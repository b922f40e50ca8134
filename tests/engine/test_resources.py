"""Run-scoped resources: opened on first use in a run, shared by its nodes, closed at its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from rhizome.engine.errors import NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.resources import run_resource
from rhizome.nodes.function import FunctionNode


class Counter:
    """An opener that numbers each opening and records openings and closings."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[str] = []
        self.fail = fail

    @asynccontextmanager
    async def open(self) -> AsyncIterator[int]:
        if self.fail:
            raise OSError("the resource is down")
        number = self.events.count("open") + 1
        self.events.append("open")
        try:
            yield number
        finally:
            self.events.append("close")


def graph_using(counter: Counter) -> Graph:
    async def first(x: int) -> int:
        value = await run_resource(counter, counter.open)
        assert counter.events[-1] == "open"  # open while the run goes on
        return x + (value or 0)

    async def second(y: int) -> int:
        value = await run_resource(counter, counter.open)
        return y + (value or 0)

    return (
        Graph("uses_resource")
        .add("first", FunctionNode(first, outputs=["y"]))
        .add("second", FunctionNode(second, outputs=["z"]))
        .connect("first", "second")
    )


async def test_a_run_opens_the_resource_once_and_closes_it_at_its_end() -> None:
    counter = Counter()
    graph = graph_using(counter)
    assert (await graph.run(x=10))["z"] == 12  # both nodes got opening number 1
    assert counter.events == ["open", "close"]
    assert (await graph.run(x=10))["z"] == 14  # a new run opens it again
    assert counter.events == ["open", "close"] * 2


async def test_a_batch_shares_one_opening_among_its_examples() -> None:
    counter = Counter()
    results = await graph_using(counter).batch([{"x": i} for i in range(4)], concurrency=2)
    assert [r.prediction["z"] for r in results if r.prediction] == [2, 3, 4, 5]
    assert counter.events == ["open", "close"]


async def test_outside_a_run_there_is_no_scope() -> None:
    counter = Counter()
    assert await run_resource(counter, counter.open) is None
    assert counter.events == []


async def test_a_resource_that_fails_to_open_fails_the_node() -> None:
    counter = Counter(fail=True)
    with pytest.raises(NodeError, match="the resource is down"):
        await graph_using(counter).run(x=1)
