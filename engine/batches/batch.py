"""Batches: run a graph over many examples concurrently, recording each failure.

``await graph.batch(examples, concurrency=64)`` returns one
:class:`BatchResult` per example in input order; ``graph.stream(...)`` yields
them as they finish. A failing example (a node error, a missing input) is
recorded in its result and never stops the batch. Concurrency is bounded by a
``CapacityLimiter`` per batch call; the LM client holds its own per-endpoint
limit, so batches nested inside optimizers never multiply the load on a server.

With ``run_dir=...`` every finished result is also appended to
``run_dir/results.jsonl`` (see :mod:`rhizome.engine.batches.journal`), and a batch
started again on the same directory skips the examples already recorded:
an interrupted batch resumes instead of starting over. Only successes count as
done: failed examples run again on resume. Results read back from the journal
hold JSON values and no trace (``resumed=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from rhizome.engine.batches.gc_scope import calm_collector
from rhizome.engine.batches.journal import Journal
from rhizome.engine.batches.progress import Progress
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError, describe
from rhizome.engine.example import Example, Prediction
from rhizome.engine.graphs import saving
from rhizome.engine.graphs.scheduler import run_traced
from rhizome.engine.resources import resource_scope
from rhizome.engine.trace import Trace, jsonable

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.graphs.plan import Plan

__all__ = (
    "BatchResult",
    "BatchWork",
    "ExampleLike",
    "example_key",
    "journal_row",
    "resume_batch",
    "run_batch",
    "stream_batch",
)


ExampleLike: TypeAlias = Example | Mapping[str, Any]
Deliver: TypeAlias = Callable[["BatchResult"], Awaitable[None]]
RunDir: TypeAlias = str | os.PathLike[str] | None


@dataclasses.dataclass(kw_only=True)
class BatchResult:
    """The outcome of one example of a batch.

    Attributes:
        index: The example's position in the input.
        example: The example as given.
        prediction: The outputs (with ``.trace``), or None when the run failed.
        error: :func:`~rhizome.engine.errors.describe` of the failure, or None.
        trace: The run's trace (partial when it failed), or None.
        resumed: True when read back from a run directory's journal instead of
            run now; the prediction then holds JSON values and there is no trace.
    """

    index: int
    example: ExampleLike
    prediction: Prediction | None = None
    error: dict[str, Any] | None = None
    trace: Trace | None = None
    resumed: bool = False

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
    run_dir: RunDir = None,
) -> list[BatchResult]:
    """Run ``graph`` on every example; results in input order.

    Args:
        graph: The graph to run.
        examples: Examples or plain dicts; fields the graph does not take are ignored.
        concurrency: How many examples run at once.
        lm: The default LM for this batch.
        progress: Show a progress bar on stderr: True, False, or None for
            "only on a terminal".
        run_dir: A directory to journal results in and resume from (see the
            module docstring); None keeps results in memory only.

    Raises:
        ConfigError: Bad ``concurrency``, or ``run_dir`` holds results of
            another program or of other examples.
    """
    items = list(examples)
    _check_concurrency(concurrency)
    graph.plan()  # invalid wiring fails the whole batch, once, up front
    results: list[BatchResult | None] = [None] * len(items)

    async def keep(result: BatchResult) -> None:
        results[result.index] = result

    with resume_batch(graph, items, run_dir) as work:
        for result in work.done:
            results[result.index] = result
        deliver = work.recording(keep)
        await _drive(graph, work.todo, deliver, concurrency=concurrency, lm=lm, progress=progress)
    return [r for r in results if r is not None]


async def stream_batch(
    graph: Graph,
    examples: Iterable[ExampleLike],
    *,
    concurrency: int = 16,
    lm: LM | None = None,
    progress: bool | None = None,
    run_dir: RunDir = None,
) -> AsyncGenerator[BatchResult, None]:
    """Like :func:`run_batch`, yielding each result as soon as it is finished.

    With ``run_dir``, the results already recorded there come first.
    To stop early, close the iterator so the remaining runs are cancelled::

        async with contextlib.aclosing(graph.stream(examples)) as results:
            async for result in results:
                ...
    """
    items = list(examples)
    _check_concurrency(concurrency)
    graph.plan()  # wiring errors surface here, not wrapped in a task group's error
    with resume_batch(graph, items, run_dir) as work:
        for result in work.done:
            yield result
        send, receive = anyio.create_memory_object_stream[BatchResult](math.inf)
        deliver = work.recording(send.send)

        async def drive() -> None:
            async with send:
                await _drive(
                    graph, work.todo, deliver, concurrency=concurrency, lm=lm, progress=progress
                )

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
    todo: list[tuple[int, ExampleLike]],
    deliver: Deliver,
    *,
    concurrency: int,
    lm: LM | None,
    progress: bool | None,
) -> None:
    plan = graph.plan()
    names = list(plan.inputs)
    limiter = anyio.CapacityLimiter(concurrency)
    bar = Progress(len(todo), enabled=progress, label=graph.name)

    async def one(index: int, example: ExampleLike) -> None:
        try:
            result = await _run_one(plan, index, example, names)
            bar.update(ok=result.ok)
            await deliver(result)
        finally:
            limiter.release_on_behalf_of(index)

    try:
        with context(lm=lm) if lm is not None else contextlib.nullcontext(), calm_collector():
            # One resource scope for the batch: its examples share an MCP server's session.
            async with resource_scope(), anyio.create_task_group() as tg:
                for index, example in todo:
                    # Taking the slot before starting keeps at most `concurrency` tasks alive.
                    await limiter.acquire_on_behalf_of(index)
                    tg.start_soon(one, index, example)
    finally:
        bar.close()


def _check_concurrency(concurrency: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, got {concurrency!r}")


async def _run_one(plan: Plan, index: int, example: ExampleLike, names: list[str]) -> BatchResult:
    # The plan, not graph.run: a batch run opens no span of its own (a batch's
    # caller emits spans from the results, as `rhizome batch` does).
    trace = Trace()
    try:
        values = _inputs_of(example, names)
        prediction = await run_traced(plan, values, trace=trace)
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


# ---- run directories ------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class BatchWork:
    """What a (possibly resumed) batch still has to do, and where results are journaled."""

    done: list[BatchResult]
    todo: list[tuple[int, ExampleLike]]
    journal: Journal | None = None
    keys: list[str] = dataclasses.field(default_factory=list)

    def recording(self, deliver: Deliver) -> Deliver:
        """``deliver``, writing each result to the journal first (when there is one)."""
        journal = self.journal
        if journal is None:
            return deliver

        async def record(result: BatchResult) -> None:
            journal.append(journal_row(result, self.keys[result.index]))
            await deliver(result)

        return record


@contextlib.contextmanager
def resume_batch(graph: Graph, items: list[ExampleLike], run_dir: RunDir) -> Iterator[BatchWork]:
    """What a batch over ``items`` still has to do, reading ``run_dir``'s journal if given.

    Finished examples come back as results; failed and missing ones are to do.
    The journal, opened for ``graph``'s program, records new results while the
    block runs (see :meth:`BatchWork.recording`).
    """
    if run_dir is None:
        yield BatchWork(done=[], todo=list(enumerate(items)))
        return
    keys = [example_key(example) for example in items]
    with Journal(run_dir, program=saving.program_fingerprint(graph)) as journal:
        done: list[BatchResult] = []
        for index, row in sorted(journal.rows.items()):
            if index >= len(items) or row.get("key") != keys[index]:
                raise ConfigError(
                    f"run_dir {str(run_dir)!r} holds a result for example {index} that is not "
                    f"the example at that position now (the examples changed?); pass a new "
                    "run_dir, or delete this one to start over"
                )
            restored = _restored(row, items[index])
            if restored is not None and restored.ok:  # failed examples run again
                done.append(restored)
        finished = {r.index for r in done}
        todo = [(i, example) for i, example in enumerate(items) if i not in finished]
        yield BatchWork(done=done, todo=todo, journal=journal, keys=keys)


def example_key(example: ExampleLike) -> str:
    """A short, stable hash of an example's JSON form: how a journal knows it again."""
    data = jsonable(dict(example) if isinstance(example, Mapping) else example)
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def journal_row(result: BatchResult, key: str) -> dict[str, Any]:
    """A result as one JSON-ready journal line: outputs or error, and a trace summary."""
    trace = result.trace
    summary = None
    if trace is not None:
        nodes = [record.node for record in trace.records]
        summary = {"nodes": nodes, "usage": trace.usage(), "error": trace.error}
    prediction = result.prediction
    return {
        "index": result.index,
        "key": key,
        "ok": result.ok,
        "prediction": jsonable(prediction.to_dict()) if prediction is not None else None,
        "error": jsonable(result.error),
        "trace": summary,
    }


def _restored(row: Mapping[str, Any], example: ExampleLike) -> BatchResult | None:
    """The result a journal row describes, or None when the row is incomplete."""
    prediction, error = row.get("prediction"), row.get("error")
    if isinstance(error, dict):
        return BatchResult(index=row["index"], example=example, error=error, resumed=True)
    if isinstance(prediction, dict):
        return BatchResult(
            index=row["index"], example=example, prediction=Prediction(prediction), resumed=True
        )
    return None
