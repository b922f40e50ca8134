"""Resumable batches: the run directory's journal, what it keeps and what it refuses."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict


class Counter:
    """A doubling node function that counts its calls and fails on negative input."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def __call__(self, x: int) -> int:
        self.calls.append(x)
        if x < 0:
            raise ValueError(f"negative: {x}")
        return 2 * x


def doubler(counter: Counter) -> Graph:
    return Graph("double").add("f", FunctionNode(counter, inputs=["x"], outputs=["y"]))


def lines(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


async def test_results_are_journaled_and_a_rerun_redoes_nothing(tmp_path: Path) -> None:
    counter = Counter()
    examples: list[Any] = [Example(x=1), {"x": -2}, {"x": 3}, {"y": 0}]
    first = await doubler(counter).batch(examples, run_dir=tmp_path)
    assert sorted(counter.calls) == [-2, 1, 3]

    rows = {row["index"]: row for row in lines(tmp_path)}
    assert rows[0]["prediction"] == {"y": 2}
    assert rows[0]["trace"]["nodes"] == ["f"]
    assert rows[1]["error"]["cause"] == {"type": "ValueError", "message": "negative: -2"}
    assert "missing required input(s): x" in rows[3]["error"]["message"]

    again = await doubler(counter).batch(examples, run_dir=tmp_path)
    assert sorted(counter.calls) == [-2, -2, 1, 3], "only the failed examples ran again"
    assert [r.resumed for r in again] == [True, False, True, False]
    assert [r.ok for r in again] == [r.ok for r in first] == [True, False, True, False]
    assert [r.prediction for r in again] == [r.prediction for r in first]
    assert [r.error for r in again] == [r.error for r in first]
    assert len(lines(tmp_path)) == 6  # the failures' new lines; the last line per example wins


async def test_torn_last_line_is_cut_and_its_example_runs_again(tmp_path: Path) -> None:
    counter = Counter()
    examples = [{"x": i} for i in range(5)]
    await doubler(counter).batch(examples, run_dir=tmp_path)
    journal = tmp_path / "results.jsonl"
    text = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    torn = json.loads(text[-1])["index"]
    journal.write_text("".join(text[:-1]) + text[-1][:15], encoding="utf-8")  # died mid-write

    counter.calls.clear()
    results = await doubler(counter).batch(examples, run_dir=tmp_path)
    assert counter.calls == [torn]
    assert [r.prediction["y"] for r in results if r.prediction] == [0, 2, 4, 6, 8]
    assert sorted(row["index"] for row in lines(tmp_path)) == [0, 1, 2, 3, 4]


async def test_unreadable_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = Counter()
    examples = [{"x": i} for i in range(3)]
    await doubler(counter).batch(examples, run_dir=tmp_path)
    journal = tmp_path / "results.jsonl"
    rows = journal.read_text(encoding="utf-8").splitlines()
    journal.write_text("\n".join([rows[0], "{garbage", *rows[2:]]) + "\n", encoding="utf-8")
    counter.calls.clear()
    with caplog.at_level(logging.WARNING, logger="rhizome.batch"):
        results = await doubler(counter).batch(examples, run_dir=tmp_path)
    assert counter.calls == [json.loads(rows[1])["index"]]
    assert "line 2 is unreadable" in caplog.text
    assert all(r.ok for r in results)


async def test_a_changed_program_is_refused(tmp_path: Path) -> None:
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    graph.set_parameters({"answer.instruction": "Be brief."})
    await graph.batch([], run_dir=tmp_path)
    graph.set_parameters({"answer.instruction": "Be thorough."})
    with pytest.raises(ConfigError, match="holds results of a different program"):
        await graph.batch([{"question": "q"}], run_dir=tmp_path)


async def test_changed_examples_are_refused(tmp_path: Path) -> None:
    counter = Counter()
    await doubler(counter).batch([{"x": 1}, {"x": 2}], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="example 1 that is not the example at that position"):
        await doubler(counter).batch([{"x": 1}, {"x": 5}], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="the examples changed"):
        await doubler(counter).batch([{"x": 1}], run_dir=tmp_path)
    # More examples than before is a longer run of the same data: fine.
    results = await doubler(counter).batch([{"x": 1}, {"x": 2}, {"x": 3}], run_dir=tmp_path)
    assert [r.resumed for r in results] == [True, True, False]


async def test_a_directory_that_is_not_a_batch_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"index": 0, "score": 1.0}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a batch run directory"):
        await doubler(Counter()).batch([{"x": 1}], run_dir=tmp_path)


async def test_stream_yields_journaled_results_first(tmp_path: Path) -> None:
    counter = Counter()
    examples = [{"x": i} for i in range(6)]
    async with contextlib.aclosing(doubler(counter).stream(examples, run_dir=tmp_path)) as stream:
        async for result in stream:
            if result.index == 2:
                break  # stop early: the rest is cancelled
    done = {row["index"] for row in lines(tmp_path)}
    assert 2 in done

    counter.calls.clear()
    seen = [r async for r in doubler(counter).stream(examples, run_dir=tmp_path)]
    assert [r.index for r in seen[: len(done)]] == sorted(done)
    assert all(r.resumed for r in seen[: len(done)])
    assert sorted(counter.calls) == sorted(set(range(6)) - done)
    assert sorted(r.index for r in seen) == list(range(6))


async def test_without_run_dir_nothing_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    results = await doubler(Counter()).batch([{"x": 1}])
    assert results[0].trace is not None
    assert not results[0].resumed
    assert os.listdir(tmp_path) == []


async def test_cancelled_examples_are_not_journaled(tmp_path: Path) -> None:
    async def slow(x: int) -> int:
        await anyio.sleep(0 if x < 3 else 30)
        return x

    graph = Graph("slow").add("f", FunctionNode(slow, outputs=["y"]))
    with anyio.move_on_after(0.5):
        await graph.batch([{"x": i} for i in range(6)], concurrency=6, run_dir=tmp_path)
    assert sorted(row["index"] for row in lines(tmp_path)) == [0, 1, 2]
    assert all(row["ok"] for row in lines(tmp_path))
