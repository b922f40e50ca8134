"""The Ray Data actor of a distributed batch: one graph, one LM client, many examples at once.

Ray Data builds one :class:`BatchWorker` per actor of the pool (``map_batches``
with ``compute=ActorPoolStrategy``) and calls it with batches of input rows.
The worker rebuilds the graph from its :class:`~.spec.ProgramSpec`, keeps one
LM client (its connection pool and cache) for its whole life, and runs each
batch through the engine's own async batch
(:func:`~rhizome.engine.batches.batch.stream_batch`): a failing example is
recorded in its row's ``error`` column and never fails the batch.

Rows in and out are plain columns: ``index`` and ``example`` (JSON text) in;
``index``, ``key``, ``ok``, ``outputs`` and ``error`` (JSON text, or None),
``usage`` (JSON text) and ``node`` (the Ray node that ran it) out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rhizome.engine.batches.batch import BatchResult, stream_batch
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LM
from rhizome.engine.distributed.gate import GatedLimiter
from rhizome.engine.distributed.spec import LMSpec, ProgramSpec, ledger_scope
from rhizome.engine.trace import jsonable

__all__ = ("COLUMNS", "BatchWorker", "result_row", "shared_client")

COLUMNS = ("index", "key", "ok", "outputs", "error", "usage", "node")

LEDGER_EVERY = 8
"""Finished rows sent to the ledger in one call: one actor call per row would
cost more than a fast example; a worker dying loses at most these few (they run
again elsewhere)."""


def result_row(result: BatchResult, key: str, node: str, *, trace: bool = False) -> dict[str, Any]:
    """One output row of a distributed batch (the columns of :data:`COLUMNS`).

    With ``trace``, the row also holds the run's whole trace as JSON text
    (``trace``), for callers that judge or learn from traces (evaluations).
    """
    prediction = result.prediction
    outputs = json.dumps(jsonable(dict(prediction))) if prediction is not None else None
    usage = result.trace.usage() if result.trace is not None else {}
    row = {
        "index": result.index,
        "key": key,
        "ok": result.ok,
        "outputs": outputs,
        "error": json.dumps(jsonable(result.error)) if result.error is not None else None,
        "usage": json.dumps(usage),
        "node": node,
    }
    if trace:
        row["trace"] = result.trace.to_json(indent=None) if result.trace is not None else None
    return row


_CLIENTS: dict[tuple[str, bool], OpenAILM] = {}


def shared_client(spec: LMSpec, coordinator: Any, gated: bool) -> OpenAILM:
    """One LM client per worker process and LM settings, kept for the process's life.

    Every program a worker runs (each candidate of a search) sends through this
    one client, so its connection pool, cache and limiter are shared.
    """
    key = (json.dumps(dataclasses.asdict(spec), sort_keys=True), gated)
    client = _CLIENTS.get(key)
    if client is None:
        client = spec.build()
        if gated:
            client.use_limiter(GatedLimiter(client.limits.max_concurrency, coordinator))
        _CLIENTS[key] = client
    return client


class BatchWorker:
    """A pool actor running batches of one program (see the module docstring).

    Args:
        program: The graph to rebuild.
        lm: The default LM's settings, or None when the graph binds its own.
        coordinator: The run's coordinator actor (shared cap and ledger), or None.
        concurrency: Examples in flight at once per batch call.
        gated: Take a permit from the coordinator's cluster-wide cap before each request.
        traces: Return each run's trace too (a ``trace`` column).
    """

    def __init__(
        self,
        program: ProgramSpec,
        lm: LMSpec | None,
        coordinator: Any,
        concurrency: int,
        gated: bool,
        traces: bool = False,
    ) -> None:
        import ray

        self.graph = program.build()
        self.lm: LM | None = shared_client(lm, coordinator, gated) if lm is not None else None
        self.coordinator = coordinator
        self.concurrency = concurrency
        self.traces = traces
        self.scope = ledger_scope(program, lm)
        self.node = ray.get_runtime_context().get_node_id()

    async def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Run one batch of rows; rows the ledger already holds are not run again."""
        indices = [int(i) for i in batch["index"]]
        keys = [str(k) for k in batch["key"]]
        examples = [json.loads(text) for text in batch["example"]]
        scoped = [f"{self.scope}:{k}" for k in keys]
        found: dict[str, dict[str, Any]] = await self.coordinator.lookup.remote(scoped)
        done = {k: found[s] for k, s in zip(keys, scoped, strict=True) if s in found}
        rows = [done[k] for k in keys if k in done]
        todo = [(i, k, e) for i, k, e in zip(indices, keys, examples, strict=True) if k not in done]
        rows += await self._run(todo)
        names = (*COLUMNS, "trace") if self.traces else COLUMNS
        return {name: [row.get(name) for row in rows] for name in names}

    async def _run(self, todo: list[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if not todo:
            return rows
        stream = stream_batch(
            self.graph,
            [example for _, _, example in todo],
            concurrency=self.concurrency,
            lm=self.lm,
            progress=False,
        )
        finished: dict[str, dict[str, Any]] = {}
        async with contextlib.aclosing(stream) as results:
            async for result in results:
                index, key, _ = todo[result.index]
                result.index = index
                row = result_row(result, key, self.node, trace=self.traces)
                if result.ok:  # the ledger keeps successes only: failures run again
                    finished[f"{self.scope}:{key}"] = row
                if len(finished) >= LEDGER_EVERY:
                    self.coordinator.record.remote(finished)
                    finished = {}
                rows.append(row)
        if finished:
            self.coordinator.record.remote(finished)
        return rows
