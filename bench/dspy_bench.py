"""DSPy's side of the benchmark, run with the DSPy venv; prints ``RESULT {json}``.

Usage: ``python bench/dspy_bench.py URL MODE [args]`` where MODE is

- ``overhead [calls] [model]``: sequential ``dspy.Predict`` calls (latency 0);
- ``batch [inputs] [concurrency]``: the pipeline through ``Module.batch`` (threads);
- ``abatch [inputs] [concurrency]``: the pipeline through ``acall`` and asyncio.

The program mirrors rhizome's: query writer, Python retrieval, answerer, with
DSPy's default chat adapter and caching off.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import Any

import dspy
from common import MODEL, Clock, emit, measure, questions, rates, retrieve


def _lm(url: str, model: str = MODEL) -> Any:
    return dspy.LM(f"openai/{model}", api_base=url, api_key="bench", cache=False, num_retries=0)


class Pipeline(dspy.Module):  # type: ignore[misc]
    """Query writer -> Python retrieval -> answerer: two LM calls per input."""

    def __init__(self) -> None:
        super().__init__()
        self.write_query = dspy.Predict("question -> query")
        self.answer = dspy.Predict("question, passages: list[str] -> answer")

    def forward(self, question: str) -> Any:
        """Query writer, Python retrieval, answerer (the threaded path)."""
        query = self.write_query(question=question).query
        return self.answer(question=question, passages=retrieve(query))

    async def aforward(self, question: str) -> Any:
        """The same three steps through ``acall`` (the asyncio path)."""
        query = (await self.write_query.acall(question=question)).query
        return await self.answer.acall(question=question, passages=retrieve(query))


def overhead(url: str, calls: int, model: str, rounds: int = 5) -> dict[str, Any]:
    """Microseconds per sequential single-predictor call: the median of ``rounds`` rounds."""
    predict = dspy.Predict("question -> answer")
    items = questions(calls + 20)
    walls, cpus = [], []
    with dspy.context(lm=_lm(url, model)):
        for q in items[calls:]:  # warm up
            predict(question=q)
        for _ in range(rounds):
            with Clock() as clock:
                for q in items[:calls]:
                    prediction = predict(question=q)
            walls.append(clock.wall / calls * 1e6)
            cpus.append(clock.cpu / calls * 1e6)
    assert prediction.answer, prediction
    return {
        "calls": calls,
        "rounds": rounds,
        "model": model,
        "us_per_call": statistics.median(walls),
        "us_per_call_min": min(walls),
        "cpu_us_per_call": statistics.median(cpus),
    }


def batch(url: str, inputs: int, concurrency: int) -> dict[str, Any]:
    """The pipeline through ``Module.batch`` with ``concurrency`` threads."""
    program = Pipeline()
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions(inputs)]
    with dspy.context(lm=_lm(url)), Clock() as clock:
        results = program.batch(
            examples, num_threads=concurrency, max_errors=inputs, provide_traceback=True
        )
    ok = sum(1 for r in results if r is not None and getattr(r, "answer", None))
    return rates(inputs * 2, clock, ok=ok)


def abatch(url: str, inputs: int, concurrency: int) -> dict[str, Any]:
    """The pipeline through ``acall`` on one event loop, ``concurrency`` at a time."""
    program = Pipeline()

    async def run_all() -> list[Any]:
        gate = asyncio.Semaphore(concurrency)

        async def one(q: str) -> Any:
            async with gate:
                return await program.acall(question=q)

        return await asyncio.gather(*(one(q) for q in questions(inputs)))

    with dspy.context(lm=_lm(url)), Clock() as clock:
        results = asyncio.run(run_all())
    ok = sum(1 for r in results if getattr(r, "answer", None))
    return rates(inputs * 2, clock, ok=ok)


def main() -> None:
    """Command line entry (see the module docstring)."""
    url, mode, *rest = sys.argv[1:]
    if mode == "overhead":
        calls = int(rest[0]) if rest else 300
        model = rest[1] if len(rest) > 1 else MODEL
        emit(measure(lambda: overhead(url, calls, model)))
        return
    inputs, concurrency = (int(x) for x in (rest or ["1000", "256"]))
    runner = batch if mode == "batch" else abatch
    emit(measure(lambda: runner(url, inputs, concurrency)))


if __name__ == "__main__":
    main()
