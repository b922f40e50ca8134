"""Batches: run a graph over many examples concurrently, recording each failure.

``await graph.batch(examples, concurrency=64)`` returns one
:class:`BatchResult` per example in input order; ``graph.stream(...)`` yields
them as they finish. A failing example (a node error, a missing input) is
recorded in its result and never stops the batch. Concurrency is bounded by a
``CapacityLimiter`` per batch call; the LM client holds its own per-endpoint
limit, so batches nested inside optimizers never multiply the load on a server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError, describe
from rhizome.engine.example import Example, Prediction
from rhizome.engine.progress import Progress
from rhizome.engine.scheduler import run_traced
from rhizome.engine.trace import Trace

if TYPE_CHECKING:
    from rhizome.engine.graph import Graph
    from rhizome.engine.lm import LM

ExampleLike: TypeAlias = Example | Mapping[str, Any]


@dataclasses.dataclass(kw_only=True)
class BatchResult:
    """The outcome of one example of a batch.

    Attributes:
        index: The example's position in the input.
        example: The example as given.
        prediction: The outputs (with ``.trace``), or None when the run failed.
        error: :func:`~rhizome.engine.errors.describe` of the failure, or None.
        trace: The run's trace (partial when it failed), or None.
    """

    index: int
    example: ExampleLike
    prediction: Prediction | None = None
    error: dict[str, Any] | None = None
    trace: Trace | None = None

    @property
    def ok(self) -> bool:
        """True when the example ran without error."""
        return self.error is None


async def run_batch(
    graph: Graph,
    examples: Iterable[ExampleLike],
    *,
    concurrency: int = 16,
    lm: LM | None = None,
    progress: bool | None = None,
) -> list[BatchResult]:
    """Run ``graph`` on every example; results in input order.

    Args:
        graph: The graph to run.
        examples: Examples or plain dicts; fields the graph does not take are ignored.
        concurrency: How many examples run at once.
        lm: The default LM for this batch.
        progress: Show a progress bar on stderr: True, False, or None for
            "only on a terminal".
    """
    items = list(examples)
    results: list[BatchResult | None] = [None] * len(items)

    async def keep(result: BatchResult) -> None:
        results[result.index] = result

    await _drive(graph, items, keep, concurrency=concurrency, lm=lm, progress=progress)
    return [r for r in results if r is not None]


async def stream_batch(
    graph: Graph,
    examples: Iterable[ExampleLike],
    *,
    concurrency: int = 16,
    lm: LM | None = None,
    progress: bool | None = None,
) -> AsyncIterator[BatchResult]:
    """Like :func:`run_batch`, yielding each result as soon as it is finished.

    To stop early, close the iterator so the remaining runs are cancelled::

        async with contextlib.aclosing(graph.stream(examples)) as results:
            async for result in results:
                ...
    """
    items = list(examples)
    _check_concurrency(concurrency)
    graph._validated()  # wiring errors surface here, not wrapped in a task group's error
    send, receive = anyio.create_memory_object_stream[BatchResult](math.inf)

    async def drive() -> None:
        async with send:
            await _drive(graph, items, send.send, concurrency=concurrency, lm=lm, progress=progress)

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(drive)
        try:
            async for result in receive:
                yield result
        except GeneratorExit:
            # Closed early: cancel the remaining runs and end quietly, so the task
            # group does not report the generator's closing as an error.
            tg.cancel_scope.cancel()


async def _drive(
    graph: Graph,
    items: list[ExampleLike],
    deliver: Callable[[BatchResult], Awaitable[None]],
    *,
    concurrency: int,
    lm: LM | None,
    progress: bool | None,
) -> None:
    _check_concurrency(concurrency)
    plan = graph._validated()  # invalid wiring fails the whole batch, once, up front
    names = list(plan.inputs)
    limiter = anyio.CapacityLimiter(concurrency)
    bar = Progress(len(items), enabled=progress, label=graph.name)

    async def one(index: int, example: ExampleLike) -> None:
        try:
            result = await _run_one(graph, index, example, names)
            bar.update(ok=result.ok)
            await deliver(result)
        finally:
            limiter.release_on_behalf_of(index)

    try:
        with context(lm=lm) if lm is not None else contextlib.nullcontext():
            async with anyio.create_task_group() as tg:
                for index, example in enumerate(items):
                    # Taking the slot before starting keeps at most `concurrency` tasks alive.
                    await limiter.acquire_on_behalf_of(index)
                    tg.start_soon(one, index, example)
    finally:
        bar.close()


def _check_concurrency(concurrency: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, got {concurrency!r}")


async def _run_one(graph: Graph, index: int, example: ExampleLike, names: list[str]) -> BatchResult:
    trace = Trace()
    try:
        values = _inputs_of(example, names)
        prediction = await run_traced(graph._validated(), values, trace=trace)
    except Exception as exc:
        return BatchResult(index=index, example=example, error=describe(exc), trace=trace)
    return BatchResult(index=index, example=example, prediction=prediction, trace=trace)


def _inputs_of(example: ExampleLike, names: list[str]) -> dict[str, Any]:
    if isinstance(example, Example):
        return example.inputs(names)
    if isinstance(example, Mapping):
        return {k: example[k] for k in names if k in example}
    raise TypeError(
        f"a batch takes Example objects or dicts, got {type(example).__name__}; "
        "wrap values as Example(question=...) or {'question': ...}"
    )
