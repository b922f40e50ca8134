"""Interrupts: a run that asks a person stops, waits in its checkpoint, and resumes in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.errors import ConfigError, NodeError
from rhizome.engine.graphs.checkpoint import DirectoryCheckpoint, SQLiteCheckpoint
from rhizome.engine.graphs.durable import RunWaiting, interrupt
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.human import AskHuman
from rhizome.nodes.loop import Loop


def looped_review(calls: list[str]) -> Graph:
    """A loop whose body runs a sub-graph; the sub-graph asks in the second iteration."""

    def work(n: int) -> int:
        calls.append(f"work {n}")
        return n + 1

    def check(n: int, log: str = "") -> str:
        calls.append(f"check {n}")
        verdict = interrupt({"question": "keep going?", "n": n}) if n == 2 else "auto"
        return f"{log}{n}:{verdict} "

    review = Graph("review").add("check", FunctionNode(check, outputs=["log"]))
    body = (
        Graph("body", outputs=["work.n", "log"])
        .add("work", FunctionNode(work, outputs=["n"]))
        .add("review", review)
    )
    body.connect("work.n", "review.n")
    g = Graph("looped")
    g.add("loop", Loop(body, max_iters=3, carry={"n": "n", "log": "log"}))
    g.add("final", FunctionNode(lambda log: log.strip().upper(), outputs=["report"]))
    return g.connect("loop.log", "final.log")


@pytest.mark.parametrize("kind", ["sqlite", "directory"])
async def test_an_interrupt_in_a_sub_graph_in_a_loop_resumes_in_place(
    tmp_path: Path, kind: str
) -> None:
    store = (
        SQLiteCheckpoint(tmp_path / "c.sqlite")
        if kind == "sqlite"
        else DirectoryCheckpoint(tmp_path)
    )
    calls: list[str] = []
    with pytest.raises(RunWaiting) as waiting:
        await looped_review(calls).run(n=0, checkpoint=store, run_id="rev")
    assert waiting.value.question == {"question": "keep going?", "n": 2}
    assert waiting.value.node == "loop.review.check"
    assert waiting.value.run_id == "rev"
    saved = store.read("rev")
    assert saved is not None
    assert saved.meta["status"] == "waiting"
    assert saved.meta["waiting"]["question"] == {"question": "keep going?", "n": 2}
    assert calls == ["work 0", "check 1", "work 1", "check 2"]

    calls.clear()
    result = await looped_review(calls).resume("rev", "yes", checkpoint=store)
    # Iteration 0 and the work of iteration 1 are restored; the asking node runs again.
    assert calls == ["check 2", "work 2", "check 3"]
    assert result["report"] == "1:AUTO 2:YES 3:AUTO"
    (asked,) = [r for r in result.trace.records if "interrupts" in r.details]
    assert (asked.node, asked.iteration) == ("loop.review.check", 1)
    assert asked.details["interrupts"][0]["answer"] == "yes"
    saved = store.read("rev")
    assert saved is not None
    assert saved.meta["status"] == "finished"
    assert saved.meta["waiting"] is None

    # The same run id again: all of it is restored, nothing runs.
    calls.clear()
    again = await looped_review(calls).run(checkpoint=store, run_id="rev")
    assert calls == []
    assert again["report"] == result["report"]


async def test_a_node_may_ask_several_questions_in_turn(tmp_path: Path) -> None:
    seen: list[str] = []

    def plan(goal: str) -> str:
        name = interrupt("who?")
        when = interrupt(f"when does {name} start?")
        seen.append(f"{name}/{when}")
        return f"{goal}: {name} at {when}"

    g = Graph("plan").add("plan", FunctionNode(plan, outputs=["plan"]))
    store = tmp_path / "c.sqlite"
    with pytest.raises(RunWaiting, match="who"):
        await g.run(goal="launch", checkpoint=store, run_id="p")
    with pytest.raises(RunWaiting) as second:
        await g.resume("p", "Ada", checkpoint=store)
    assert second.value.question == "when does Ada start?"
    result = await g.resume("p", "9:00", checkpoint=store)
    assert result["plan"] == "launch: Ada at 9:00"
    assert seen == ["Ada/9:00"]


async def test_ask_human_converts_the_answer_and_asks_again_when_it_does_not_fit(
    tmp_path: Path,
) -> None:
    g = Graph("pick")
    g.add("ask", AskHuman("How many copies?", inputs=["title"], output="copies", answer_type=int))
    g.add("order", FunctionNode(lambda title, copies: f"{copies} x {title}", outputs=["order"]))
    g.connect("ask.copies", "order.copies")
    store = tmp_path / "c.sqlite"
    with pytest.raises(RunWaiting) as first:
        await g.run(title="Dune", checkpoint=store, run_id="o")
    assert first.value.question == {"prompt": "How many copies?", "inputs": {"title": "Dune"}}
    with pytest.raises(RunWaiting) as again:
        await g.resume("o", "a few", checkpoint=store)
    assert "answer again" in again.value.question["error"]
    result = await g.resume("o", "3", checkpoint=store)
    assert result["order"] == "3 x Dune"


async def test_what_resume_and_interrupt_refuse(tmp_path: Path) -> None:
    g = Graph("g").add("ask", FunctionNode(lambda x: interrupt(x), outputs=["y"]))
    store = tmp_path / "c.sqlite"
    with pytest.raises(NodeError, match=r"needs a checkpointed run"):
        await g.run(x=1)
    with pytest.raises(ConfigError, match="holds no run 'nope'"):
        await g.resume("nope", "a", checkpoint=store)
    with pytest.raises(RunWaiting):
        await g.run(x=1, checkpoint=store, run_id="w")
    assert (await g.resume("w", "a", checkpoint=store))["y"] == "a"
    with pytest.raises(ConfigError, match="is not waiting for an answer"):
        await g.resume("w", "b", checkpoint=store)
    with pytest.raises(ConfigError, match="inside a running node"):
        interrupt("outside")


async def test_a_plain_run_inside_a_checkpointed_node_keeps_out_of_its_checkpoint(
    tmp_path: Path,
) -> None:
    inner_calls: list[Any] = []
    inner = Graph("inner").add(
        "f", FunctionNode(lambda v: inner_calls.append(v) or v, outputs=["w"])
    )

    async def outer_fn(x: int) -> int:
        return int((await inner.run(v=x))["w"]) + 1

    g = Graph("outer").add("f", FunctionNode(outer_fn, outputs=["y"]))
    store = SQLiteCheckpoint(tmp_path / "c.sqlite")
    assert (await g.run(x=1, checkpoint=store, run_id="o"))["y"] == 2
    saved = store.read("o")
    assert saved is not None
    assert set(saved.entries) == {"f"}  # the inner run's node 'f' did not overwrite it
    assert inner_calls == [1]
