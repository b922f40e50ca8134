"""Checkpointed runs: finished nodes are restored, not run again; what is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import ConfigError, NodeError
from rhizome.engine.graphs.checkpoint import (
    CheckpointStore,
    DirectoryCheckpoint,
    Saved,
    SQLiteCheckpoint,
)
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict
from tests.server import OpenAIServer


class Calls:
    """Functions for FunctionNodes that count their calls and may be told to fail once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()

    def node(self, name: str, fn: Any, outputs: list[str]) -> FunctionNode:
        def counted(**inputs: Any) -> Any:
            self.calls.append(name)
            if name in self.fail:
                self.fail.discard(name)
                raise RuntimeError(f"{name} crashed")
            return fn(**inputs)

        params = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
        return FunctionNode(counted, inputs=params, outputs=outputs, name_hint=name)


def chain(calls: Calls) -> Graph:
    g = Graph("chain")
    g.add("a", calls.node("a", lambda x: x + 1, ["y"]))
    g.add("b", calls.node("b", lambda y: y * 10, ["z"]))
    g.add("c", calls.node("c", lambda z: f"<{z}>", ["out"]))
    return g.connect("a", "b").connect("b", "c")


@pytest.mark.parametrize("store_kind", ["sqlite", "directory"])
async def test_a_failed_run_resumes_at_the_failed_node(tmp_path: Path, store_kind: str) -> None:
    calls = Calls()
    store = (
        SQLiteCheckpoint(tmp_path / "runs.sqlite")
        if store_kind == "sqlite"
        else DirectoryCheckpoint(tmp_path / "runs")
    )
    calls.fail.add("c")
    with pytest.raises(NodeError, match="c crashed"):
        await chain(calls).run(x=1, checkpoint=store, run_id="r1")
    assert calls.calls == ["a", "b", "c"]
    result = await chain(calls).run(checkpoint=store, run_id="r1")  # inputs come from the run
    assert result["out"] == "<20>"
    assert calls.calls == ["a", "b", "c", "c"], "only the unfinished node ran again"
    assert [r.details.get("resumed", False) for r in result.trace.records] == [True, True, False]
    saved = store.read("r1")
    assert saved is not None
    assert saved.meta["status"] == "finished"
    assert saved.meta["outputs"] == {"out": "<20>"}
    if store_kind == "directory":
        meta = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
        assert meta["inputs"] == {"x": 1}
        lines = (tmp_path / "runs" / "r1" / "entries.jsonl").read_text().splitlines()
        assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]


async def test_loops_are_recorded_per_iteration(tmp_path: Path) -> None:
    calls = Calls()
    body = Graph("step").add("inc", calls.node("inc", lambda n: n + 1, ["n"]))

    def build() -> Graph:
        g = Graph("looped")
        g.add("loop", Loop(body, max_iters=4, carry={"n": "n"}))
        g.add("done", calls.node("done", lambda n: n * 100, ["total"]))
        return g.connect("loop", "done")

    calls.fail.add("done")
    store = tmp_path / "runs.sqlite"
    with pytest.raises(NodeError):
        await build().run(n=0, checkpoint=store, run_id="loop")
    saved = SQLiteCheckpoint(store).read("loop")
    assert saved is not None
    assert {"loop[0]", "loop[3]", "loop[0].inc", "loop[3].inc", "loop"} <= set(saved.entries)
    result = await build().run(n=0, checkpoint=store, run_id="loop")
    assert result["total"] == 400
    assert calls.calls.count("inc") == 4
    assert calls.calls.count("done") == 2


async def test_lm_calls_are_not_repeated(
    server: OpenAIServer, lm: OpenAILM, tmp_path: Path
) -> None:
    server.responder = lambda body: '{"answer": "forty-two"}'
    g = Graph("qa").add("answer", Predict("question -> answer"))
    g.add("shout", FunctionNode(lambda answer: answer.upper(), outputs=["loud"]))
    g.connect("answer", "shout")
    first = await g.run(question="q?", lm=lm, checkpoint=tmp_path / "c.sqlite", run_id="q1")
    again = await g.run(question="q?", lm=lm, checkpoint=tmp_path / "c.sqlite", run_id="q1")
    assert server.request_count == 1
    assert dict(again) == dict(first) == {"loud": "FORTY-TWO"}


async def test_a_checkpoint_of_another_program_is_refused(tmp_path: Path) -> None:
    store = SQLiteCheckpoint(tmp_path / "runs.sqlite")
    await chain(Calls()).run(x=1, checkpoint=store, run_id="r")
    changed = chain(Calls()).add("d", FunctionNode(lambda out: out, outputs=["copy"]))
    changed.connect("c", "d")
    with pytest.raises(ConfigError, match=r"different program.*its structure changed"):
        await changed.run(x=1, checkpoint=store, run_id="r")
    qa = Graph("qa").add("answer", Predict("question -> answer"))
    await qa.run(question="q", checkpoint=store, run_id="qa", lm=_fake_lm())
    qa.set_parameters({"answer.instruction": "Be brief."})
    with pytest.raises(ConfigError, match="its tuned parameters"):
        await qa.run(question="q", checkpoint=store, run_id="qa")


def _fake_lm() -> Any:
    from rhizome.engine.client.fake import FakeLM

    return FakeLM(lambda request, sample: "<answer>x</answer>")


async def test_other_inputs_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    await chain(Calls()).run(x=1, checkpoint=store, run_id="r")
    with pytest.raises(ConfigError, match="started with other inputs"):
        await chain(Calls()).run(x=2, checkpoint=store, run_id="r")
    with pytest.raises(ConfigError, match="needs run_id"):
        await chain(Calls()).run(x=1, checkpoint=store)
    with pytest.raises(ConfigError, match=r"run_id '\.\./x' is not usable"):
        await chain(Calls()).run(x=1, checkpoint=store, run_id="../x")
    with pytest.raises(ConfigError, match="durability must be"):
        await chain(Calls()).run(x=1, checkpoint=store, run_id="s", durability="fast")  # type: ignore[arg-type]


async def test_batched_durability_writes_at_the_end(tmp_path: Path) -> None:
    store = SQLiteCheckpoint(tmp_path / "runs.sqlite")
    writes: list[int] = []
    original = store.write

    def counting(run_id: str, **kwargs: Any) -> None:
        writes.append(len(kwargs.get("entries", ())))
        original(run_id, **kwargs)

    store.write = counting  # type: ignore[method-assign]
    await chain(Calls()).run(x=1, checkpoint=store, run_id="b", durability="batched")
    assert writes == [0, 3], "the start, then every record with the final status"
    writes.clear()
    await chain(Calls()).run(x=1, checkpoint=store, run_id="s", durability="safe")
    assert writes == [0, 1, 1, 1, 0]


class DictStore:
    """A store of one's own: the three methods of CheckpointStore, in a dict."""

    def __init__(self) -> None:
        self.runs: dict[str, Saved] = {}

    def read(self, run_id: str) -> Saved | None:
        saved = self.runs.get(run_id)
        return None if saved is None else Saved(meta=dict(saved.meta), entries=dict(saved.entries))

    def write(self, run_id: str, *, meta: Any = None, entries: Any = ()) -> None:
        saved = self.runs.setdefault(run_id, Saved(meta={}, entries={}))
        saved.entries.update(entries)
        if meta is not None:
            saved.meta = dict(meta)

    def delete(self, run_id: str) -> None:
        self.runs.pop(run_id, None)


async def test_any_object_with_the_three_methods_is_a_store() -> None:
    store, calls = DictStore(), Calls()
    assert isinstance(store, CheckpointStore)
    calls.fail.add("b")
    with pytest.raises(NodeError):
        await chain(calls).run(x=2, checkpoint=store, run_id="own")
    assert (await chain(calls).run(checkpoint=store, run_id="own"))["out"] == "<30>"
    assert calls.calls == ["a", "b", "b", "c"]
    with pytest.raises(ConfigError, match="checkpoint= takes a path"):
        await chain(calls).run(x=2, checkpoint=object(), run_id="own")  # type: ignore[arg-type]


def test_a_torn_entry_line_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = DirectoryCheckpoint(tmp_path)
    store.write("r", meta={"status": "running"}, entries=[("a", {"outputs": {"y": 1}})])
    store.write("r", entries=[("b", {"outputs": {"z": 2}})])
    path = tmp_path / "r" / "entries.jsonl"
    text = path.read_text()
    path.write_text(text + '{"key": "c", "val')  # killed half-way through a line
    saved = store.read("r")
    assert saved is not None
    assert saved.entries == {"a": {"outputs": {"y": 1}}, "b": {"outputs": {"z": 2}}}
    assert path.read_text() == text
    path.write_text(text.replace('"b"', "oops", 1))
    with caplog.at_level("WARNING", logger="rhizome.checkpoint"):
        assert set(store.read("r").entries) == {"a"}  # type: ignore[union-attr]
    assert "line 2 is unreadable" in caplog.text
    store.delete("r")
    assert store.read("r") is None


async def test_a_cancelled_batched_run_keeps_what_finished(tmp_path: Path) -> None:
    stuck = {"yes"}

    async def slow(y: int) -> int:
        if stuck:
            await anyio.sleep(30)
        return y * 10

    def build() -> Graph:
        g = Graph("g").add("a", FunctionNode(lambda x: x + 1, outputs=["y"]))
        return g.add("b", FunctionNode(slow, outputs=["z"])).connect("a", "b")

    store = SQLiteCheckpoint(tmp_path / "c.sqlite")
    with anyio.move_on_after(0.5):  # what Ctrl-C does to a run: it is cancelled
        await build().run(x=1, checkpoint=store, run_id="c", durability="batched")
    saved = store.read("c")
    assert saved is not None
    assert saved.meta["status"] == "running"
    assert set(saved.entries) == {"a"}, "the pending record was written on the way out"
    stuck.clear()
    result = await build().run(checkpoint=store, run_id="c", durability="batched")
    assert result["z"] == 20
    assert [r.details.get("resumed", False) for r in result.trace.records] == [True, False]


async def test_a_file_that_is_not_a_checkpoint_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(ConfigError, match=r"cannot be used.*Move it aside"):
        await chain(Calls()).run(x=1, checkpoint=path, run_id="r")
