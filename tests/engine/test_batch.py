"""Batches and streams: order, failures, concurrency bound, progress, cancellation."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

import anyio
import pytest

from rhizome.engine.batches.batch import BatchResult
from rhizome.engine.batches.progress import Progress
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict


def doubler(delay_of: dict[int, float] | None = None) -> Graph:
    async def double(x: int) -> int:
        await anyio.sleep((delay_of or {}).get(x, 0))
        if x < 0:
            raise ValueError(f"negative: {x}")
        return 2 * x

    return Graph("double").add("f", FunctionNode(double, outputs=["y"]))


async def test_results_come_back_in_input_order() -> None:
    g = doubler({0: 0.05, 1: 0.02})  # early examples finish last
    results = await g.batch([{"x": i} for i in range(5)], concurrency=5)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.prediction["y"] for r in results if r.prediction] == [0, 2, 4, 6, 8]
    assert all(r.ok and r.trace is not None and r.trace.node("f") for r in results)


async def test_failures_are_recorded_and_do_not_stop_the_batch() -> None:
    g = doubler()
    examples: list[Any] = [Example(x=1, label=2), {"x": -1}, {"y": 3}, Example(x=4)]
    results = await g.batch(examples)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].example is examples[0]
    bad = results[1]
    assert bad.prediction is None
    assert bad.error is not None
    assert bad.error["type"] == "NodeError"
    assert bad.error["node"] == "f"
    assert bad.error["cause"] == {"type": "ValueError", "message": "negative: -1"}
    assert bad.trace is not None
    assert bad.trace.error is not None
    missing = results[2]
    assert missing.error is not None
    assert missing.error["type"] == "GraphError"
    assert "missing required input(s): x" in missing.error["message"]
    assert results[3].prediction == {"y": 8}


async def test_concurrency_is_bounded() -> None:
    running = peak = 0

    async def track(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return x

    g = Graph().add("f", FunctionNode(track, outputs=["y"]))
    results = await g.batch([{"x": i} for i in range(30)], concurrency=4)
    assert len(results) == 30
    assert peak == 4


async def test_batch_lm_and_per_example_traces() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        question = re.findall(r"q\d+", str(request.messages[-1]["content"]))[-1]
        return f"<answer>{question}</answer>"

    lm = FakeLM(reply)
    g = Graph().add("answer", Predict("question -> answer"))
    results = await g.batch([{"question": f"q{i}"} for i in range(20)], lm=lm, concurrency=8)
    assert [r.prediction["answer"] for r in results if r.prediction] == [f"q{i}" for i in range(20)]
    assert lm.calls == 20
    for r in results:
        assert r.trace is not None
        assert len(r.trace.lm_calls()) == 1


async def test_stream_yields_results_as_they_finish() -> None:
    g = doubler({0: 0.2})
    order = [r.index async for r in g.stream([{"x": i} for i in range(4)], concurrency=4)]
    assert sorted(order) == [0, 1, 2, 3]
    assert order[-1] == 0  # the slow first example arrives last


async def test_closing_a_stream_early_cancels_the_rest() -> None:
    finished: list[int] = []

    async def slow(x: int) -> int:
        await anyio.sleep(0 if x == 0 else 10)
        finished.append(x)
        return x

    g = Graph().add("f", FunctionNode(slow, outputs=["y"]))
    with anyio.fail_after(5):
        async with contextlib.aclosing(g.stream([{"x": i} for i in range(5)])) as results:
            async for first in results:
                assert isinstance(first, BatchResult)
                assert first.index == 0
                break
    assert finished == [0]


async def test_cancelling_a_batch_stops_promptly() -> None:
    g = doubler({i: 10 for i in range(100)})
    with anyio.fail_after(5):
        with anyio.move_on_after(0.1) as scope:
            await g.batch([{"x": i} for i in range(100)], concurrency=10)
    assert scope.cancelled_caught


async def test_bad_concurrency_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        await doubler().batch([{"x": 1}], concurrency=0)


async def test_forced_progress_on_a_non_tty_prints_about_every_ten_percent() -> None:
    stream = io.StringIO()
    bar = Progress(100, enabled=True, label="g", stream=stream)
    for i in range(100):
        bar.update(ok=i % 10 != 0)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("g [####################] 100/100")
    assert lines[-1].endswith("failed 10")


def test_progress_is_off_by_default_off_a_tty() -> None:
    stream = io.StringIO()
    bar = Progress(3, stream=stream)
    for _ in range(3):
        bar.update(ok=True)
    bar.close()
    assert stream.getvalue() == ""


def test_progress_on_a_tty_redraws_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(3, stream=stream)
    for _ in range(3):
        bar.update(ok=True)
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert text.startswith("\r")
    assert "3/3" in text
    assert "eta -" in text
