"""The same actor pool behind evaluations and optimizer trials.

``Evaluate(graph, devset, metric, executor=RayExecutor(build, lm=lm))`` runs
the evaluation's batch on a pool of Ray actors instead of in this process;
``JointSearch(metric, executor=...)`` does the same for every minibatch trial
and full evaluation of the search. The actors live as long as the executor
(one graph build per distinct candidate, one LM client per actor), so a
search's many small evaluations do not each pay for starting a pool.

A candidate travels as its factory's name and its parameters (the JSON
``Graph.save`` writes); each result comes back with its whole trace, so
metrics that read traces and the usage an optimizer budgets with are the same
as on one machine. With the same seed, a search gives the same trials and the
same program as a single-machine run against the same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from rhizome.engine.batches.batch import (
    BatchResult,
    ExampleLike,
    example_key,
    journal_row,
    resume_batch,
)
from rhizome.engine.client.protocol import LM, Usage
from rhizome.engine.distributed.runner import RayOptions, connect, endpoint_cap, start_coordinator
from rhizome.engine.distributed.spec import (
    Factory,
    LMSpec,
    ProgramSpec,
    ledger_scope,
    parameters_json,
)
from rhizome.engine.distributed.worker import BatchWorker
from rhizome.engine.example import Example, Prediction
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import LMCall, NodeRecord, Trace

__all__ = ("BatchExecutor", "PoolActor", "RayExecutor", "trace_from_dict")


class BatchExecutor(Protocol):
    """Runs a batch of a graph somewhere else; results as ``graph.batch`` gives them."""

    async def batch(
        self,
        graph: Graph,
        examples: Sequence[ExampleLike],
        *,
        concurrency: int,
        lm: LM | None,
        progress: bool | None,
        run_dir: str | os.PathLike[str] | None,
    ) -> list[BatchResult]:
        """One result per example, in input order, failures recorded."""
        ...


class PoolActor:
    """One actor of an executor's pool: a graph per candidate, one LM client for all.

    Args:
        coordinator: The pool's coordinator actor (shared cap and ledger).
        concurrency: Examples in flight at once per call.
        gated: Take a cluster permit before each LM request.
    """

    KEEP = 8  # candidates' graphs kept built at once

    def __init__(self, coordinator: Any, concurrency: int, gated: bool) -> None:
        self.coordinator = coordinator
        self.concurrency = concurrency
        self.gated = gated
        self.workers: OrderedDict[str, BatchWorker] = OrderedDict()

    async def run(
        self, program: ProgramSpec, lm: LMSpec | None, batch: dict[str, list[Any]]
    ) -> dict[str, list[Any]]:
        """Run one batch of rows of ``program`` (see :class:`~.worker.BatchWorker`)."""
        key = ledger_scope(program, lm)
        worker = self.workers.pop(key, None)
        if worker is None:
            worker = BatchWorker(
                program, lm, self.coordinator, self.concurrency, self.gated, traces=True
            )
        self.workers[key] = worker
        while len(self.workers) > self.KEEP:
            self.workers.popitem(last=False)
        return await worker(batch)


class RayExecutor:
    """Evaluations on a pool of Ray actors (see the module docstring).

    Args:
        graph_factory: ``"package.module:build"`` or a module-level function:
            the graph every candidate is a parameter setting of.
        lm: The default LM (an ``OpenAILM``) when a batch is given none.
        options: Pool size (``actors``), per-call concurrency, ``batch_size``,
            the cluster-wide cap, cluster address.
    """

    def __init__(
        self, graph_factory: Factory, *, lm: LM | None = None, options: RayOptions | None = None
    ) -> None:
        self.program = ProgramSpec.of(graph_factory, None)
        self.lm = lm
        self.options = options or RayOptions()
        self._ray: Any = None
        self._actors: list[Any] = []
        self._coordinator: Any = None
        self._next = 0

    def close(self) -> None:
        """Stop the pool's actors (a later batch starts a new pool)."""
        if self._ray is not None:
            for actor in [*self._actors, self._coordinator]:
                self._ray.kill(actor)
        self._actors, self._coordinator, self._ray = [], None, None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def batch(
        self,
        graph: Graph,
        examples: Sequence[ExampleLike],
        *,
        concurrency: int = 16,
        lm: LM | None = None,
        progress: bool | None = None,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> list[BatchResult]:
        """Run ``graph`` (a candidate built by the factory) on the pool; results in input order.

        ``concurrency`` is the pool's own (``options.concurrency`` per actor);
        ``progress`` is not shown for remote batches.
        """
        chosen = lm if lm is not None else self.lm
        spec = LMSpec.of(chosen) if chosen is not None else None
        program = dataclasses.replace(self.program, parameters=parameters_json(graph))
        items = list(examples)
        results: dict[int, BatchResult] = {}
        with resume_batch(graph, items, run_dir) as work:
            keys = work.keys or [example_key(example) for example in items]
            for result in work.done:
                results[result.index] = result
            rows = [{"index": i, "key": keys[i], "example": _plain(e)} for i, e in work.todo]
            for row in await self._run(program, spec, chosen, rows):
                index = int(row["index"])
                if index in results:
                    continue
                result = _result(row, items[index])
                if work.journal is not None:
                    work.journal.append(journal_row(result, keys[index]))
                results[index] = result
        return [results[i] for i in sorted(results)]

    async def _run(
        self, program: ProgramSpec, spec: LMSpec | None, lm: LM | None, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if not rows:
            return []
        actors = self._pool(spec, lm)
        size = self.options.batch_size
        calls = []
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            batch = {name: [r[name] for r in chunk] for name in ("index", "key", "example")}
            actor = actors[self._next % len(actors)]
            self._next += 1
            calls.append(actor.run.remote(program, spec, batch))
        done = await asyncio.gather(*calls)
        out = [row for columns in done for row in _rows(columns)]
        scope = ledger_scope(program, spec)
        self._coordinator.forget.remote([f"{scope}:{r['key']}" for r in out])
        return out

    def _pool(self, spec: LMSpec | None, lm: LM | None) -> list[Any]:
        if self._actors:
            return self._actors
        options = self.options
        self._ray = ray = connect(options.address, LMSpec.secret_env(lm))
        cap = endpoint_cap(options, spec) if spec is not None else 0
        self._coordinator = start_coordinator(ray, cap or None, options.ttl)
        env = LMSpec.secret_env(lm)
        actor = ray.remote(PoolActor).options(
            num_cpus=options.num_cpus,
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env} if env else None,
        )
        self._actors = [
            actor.remote(self._coordinator, options.concurrency, cap > 0)
            for _ in range(options.actors)
        ]
        return self._actors


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _plain(example: ExampleLike) -> str:
    return json.dumps(dict(example), ensure_ascii=False)


def _result(row: dict[str, Any], example: ExampleLike) -> BatchResult:
    trace = trace_from_dict(json.loads(row["trace"])) if row.get("trace") else None
    outputs = json.loads(row["outputs"]) if row["outputs"] is not None else None
    error = json.loads(row["error"]) if row["error"] is not None else None
    prediction = Prediction(outputs, trace=trace) if outputs is not None else None
    if not isinstance(example, Example) and isinstance(example, dict):
        example = dict(example)
    return BatchResult(
        index=int(row["index"]), example=example, prediction=prediction, error=error, trace=trace
    )


def trace_from_dict(data: dict[str, Any]) -> Trace:
    """A :class:`~rhizome.engine.trace.Trace` back from ``Trace.to_dict()`` (JSON values)."""
    trace = Trace()
    trace.inputs = dict(data.get("inputs") or {})
    trace.outputs = dict(data.get("outputs") or {})
    trace.error = data.get("error")
    trace.records = [_record(r) for r in data.get("records") or ()]
    return trace


def _record(data: dict[str, Any]) -> NodeRecord:
    fields = {f.name for f in dataclasses.fields(NodeRecord)}
    values = {k: v for k, v in data.items() if k in fields}
    values["calls"] = [_call(c) for c in data.get("calls") or ()]
    return NodeRecord(**values)


def _call(data: dict[str, Any]) -> LMCall:
    fields = {f.name for f in dataclasses.fields(LMCall)}
    values = {k: v for k, v in data.items() if k in fields}
    values["usage"] = Usage(**(data.get("usage") or {}))
    return LMCall(**values)
