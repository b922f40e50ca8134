"""The driver of a distributed batch: resume, fan out over Ray Data, collect, journal, write.

:func:`ray_batch` reads the examples, skips those the run directory's journal
already holds a success for (the journal and its rules are the single-machine
batch's, :mod:`rhizome.engine.batches.journal`), and hands the rest to Ray
Data: ``map_batches`` over a pool of :class:`~.worker.BatchWorker` actors. Rows
stream back to the driver, which journals and writes each one once, whatever
Ray retried: an example whose worker died runs again on another actor, and an
example it had already finished is taken from the coordinator's ledger
instead of being sent again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from typing import Any

from rhizome.engine.batches.batch import (
    BatchResult,
    ExampleLike,
    example_key,
    journal_row,
    resume_batch,
)
from rhizome.engine.batches.progress import Progress
from rhizome.engine.client.protocol import LM
from rhizome.engine.distributed.gate import Coordinator
from rhizome.engine.distributed.ray_import import require_ray
from rhizome.engine.distributed.sources import RowWriter, Source, examples_of
from rhizome.engine.distributed.spec import Factory, LMSpec, ProgramSpec, ledger_scope
from rhizome.engine.distributed.worker import COLUMNS, BatchWorker
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Prediction

__all__ = (
    "RayOptions",
    "connect",
    "endpoint_cap",
    "ray_batch",
    "ray_dataset",
    "ray_map",
    "start_coordinator",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How a batch spreads over the cluster.

    Attributes:
        actors: Worker actors in the pool (one LM client each).
        concurrency: Examples in flight at once per batch an actor runs.
        batch_size: Examples per ``map_batches`` batch.
        max_concurrency: Requests in flight at the endpoint across the whole
            cluster; None takes the LM's ``max_concurrency``, 0 sets no shared cap.
        num_cpus: CPUs each actor reserves (fractions allowed).
        address: The Ray cluster to join (``"ray://..."``, ``"auto"``); None
            starts or reuses a local one.
        ttl: Seconds after which a silent worker's permits go back to the pool.
    """

    actors: int = 2
    concurrency: int = 16
    batch_size: int = 16
    max_concurrency: int | None = None
    num_cpus: float = 1.0
    address: str | None = None
    ttl: float = 5.0

    def __post_init__(self) -> None:
        for name in ("actors", "concurrency", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RayOptions({name}={value!r}) must be a whole number >= 1")
        cap = self.max_concurrency
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ConfigError(f"RayOptions(max_concurrency={cap!r}) must be an int >= 0 or None")


def connect(address: str | None, env: dict[str, str]) -> Any:
    """Ray, initialised (joining ``address``, or a local cluster) unless it already is."""
    ray = require_ray()
    if not ray.is_initialized():
        runtime_env = {"env_vars": env} if env else None
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    return ray


def ray_map(
    dataset: Any,
    program: ProgramSpec,
    *,
    lm: LM | None,
    options: RayOptions,
    coordinator: Any,
) -> Any:
    """``dataset`` (columns ``index``, ``key``, ``example``) mapped to result rows, lazily."""
    ray = require_ray()
    spec = LMSpec.of(lm) if lm is not None else None
    gated = spec is not None and endpoint_cap(options, spec) > 0
    env = LMSpec.secret_env(lm)
    return dataset.map_batches(
        BatchWorker,
        fn_constructor_args=(program, spec, coordinator, options.concurrency, gated),
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.num_cpus,
        runtime_env={"env_vars": env} if env else None,
    )


def ray_batch(
    graph_factory: Factory,
    source: Source,
    *,
    parameters: str | os.PathLike[str] | None = None,
    lm: LM | None = None,
    options: RayOptions | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Run a graph over ``source`` on a Ray cluster; rows in input order.

    Args:
        graph_factory: ``"package.module:build"``, or a module-level function
            returning the graph; every worker builds its own graph from it.
        source: Examples (dicts or ``Example``), a JSONL or Parquet path, or a Ray Dataset.
        parameters: Saved parameters (``Graph.save``'s JSON) loaded onto every
            worker's graph.
        lm: The default LM (an ``OpenAILM``); workers rebuild it from its
            settings and read its key from its ``api_key_env`` variable.
        options: Pool size, concurrency, the cluster-wide cap, cluster address.
        run_dir: Journal results there and resume from it, as ``graph.batch`` does.
        output: Also write rows to this ``.jsonl`` or ``.parquet`` file.
        progress: Progress on stderr (None: only on a terminal).

    Returns:
        One dict per example: ``index``, ``inputs``, ``outputs`` (None when it
        failed), ``error`` (None when it ran), ``usage``, ``node`` (the Ray
        node that ran it; None for rows resumed from the journal).

    Raises:
        RayMissingError: Ray is not installed (``pip install "rhizome[ray]"``).
        ConfigError: Bad options or source, or ``run_dir`` holds another program's results.
    """
    options = options or RayOptions()
    program = ProgramSpec.of(graph_factory, parameters)
    graph = program.build()  # fails here, once, rather than on every worker
    items = list(examples_of(source))
    as_examples: list[ExampleLike] = [*items]
    ray = connect(options.address, LMSpec.secret_env(lm))
    writer = RowWriter(output) if output is not None else None
    rows: dict[int, dict[str, Any]] = {}
    try:
        with resume_batch(graph, as_examples, run_dir) as work:
            keys = work.keys or [example_key(example) for example in items]
            for result in work.done:
                rows[result.index] = _public(result, items, node=None, usage={})
            if writer is not None:
                writer.write([rows[i] for i in sorted(rows)])
            todo = [(i, keys[i], items[i]) for i, _ in work.todo]
            for result, node, usage in _fan_out(
                ray, program, todo, lm, options, progress, graph.name
            ):
                if work.journal is not None:
                    work.journal.append(journal_row(result, keys[result.index]))
                rows[result.index] = row = _public(result, items, node=node, usage=usage)
                if writer is not None:
                    writer.write([row])
    finally:
        if writer is not None:
            writer.close()
    return [rows[i] for i in sorted(rows)]


def ray_dataset(
    graph_factory: Factory,
    source: Source,
    *,
    parameters: str | os.PathLike[str] | None = None,
    lm: LM | None = None,
    options: RayOptions | None = None,
) -> Any:
    """Run a graph over ``source`` on a Ray cluster, as a lazy Ray Dataset of result rows.

    The rows are computed as the dataset is consumed (``iter_rows``,
    ``write_parquet``, ``take_all``, further ``map_batches``), by the same actor
    pool, cluster-wide cap and ledger as :func:`ray_batch`; a worker that dies
    has its block run again elsewhere, and examples the ledger already holds are
    not sent twice. Columns: ``index`` (position in ``source``), ``key`` (the
    example's hash), ``ok``, ``outputs`` and ``error`` (JSON text, one of them
    None), ``usage`` (JSON text) and ``node``. Use :func:`ray_batch` for a
    journal (``run_dir``) and rows in input order.

    ``source`` is read on the driver (examples, a JSONL or Parquet path, or a
    Ray Dataset of example rows) to number the examples; the coordinator actor
    lives as long as the returned dataset.

    Raises:
        RayMissingError: Ray is not installed (``pip install "rhizome[ray]"``).
        ConfigError: Bad options or source.
    """
    options = options or RayOptions()
    program = ProgramSpec.of(graph_factory, parameters)
    program.build()  # fails here, once, rather than on every worker
    items = list(examples_of(source))
    ray = connect(options.address, LMSpec.secret_env(lm))
    spec = LMSpec.of(lm) if lm is not None else None
    cap = endpoint_cap(options, spec) if spec is not None else 0
    coordinator = start_coordinator(ray, cap or None, options.ttl)
    inputs = [
        {"index": i, "key": example_key(e), "example": json.dumps(e)} for i, e in enumerate(items)
    ]
    blocks = max(1, min(len(inputs), math.ceil(len(inputs) / options.batch_size)))
    dataset = ray.data.from_items(inputs, override_num_blocks=blocks)
    pool = dataclasses.replace(options, actors=max(1, min(options.actors, blocks)))
    mapped = ray_map(dataset, program, lm=lm, options=pool, coordinator=coordinator)
    # One schema for every block: a block whose examples all ran has an all-None
    # error column, which Arrow would type as null and sinks could not join.
    return mapped.map_batches(_row_schema, batch_format="pyarrow", batch_size=None)


def _row_schema(batch: Any) -> Any:
    """A block of result rows cast to the columns' fixed Arrow types."""
    import pyarrow as pa

    types = {"index": pa.int64(), "ok": pa.bool_()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])
    return batch.select(schema.names).cast(schema)


def _fan_out(
    ray: Any,
    program: ProgramSpec,
    todo: list[tuple[int, str, dict[str, Any]]],
    lm: LM | None,
    options: RayOptions,
    progress: bool | None,
    label: str,
) -> Iterator[tuple[BatchResult, str, dict[str, float]]]:
    """Each example's result, the node that ran it and its usage, once each, as they arrive."""
    if not todo:
        return
    spec = LMSpec.of(lm) if lm is not None else None
    cap = endpoint_cap(options, spec) if spec is not None else 0
    coordinator = start_coordinator(ray, cap or None, options.ttl)
    inputs = [{"index": i, "key": k, "example": json.dumps(e)} for i, k, e in todo]
    blocks = max(1, min(len(inputs), math.ceil(len(inputs) / options.batch_size)))
    dataset = ray.data.from_items(inputs, override_num_blocks=blocks)
    # Never more actors than blocks: an actor without a block would only start up.
    pool = dataclasses.replace(options, actors=min(options.actors, blocks))
    mapped = ray_map(dataset, program, lm=lm, options=pool, coordinator=coordinator)
    examples = {i: e for i, _, e in todo}
    scope = ledger_scope(program, spec)
    seen: set[int] = set()
    bar = Progress(len(todo), enabled=progress, label=label)
    try:
        for batch in mapped.iter_batches(batch_format="pandas", batch_size=None):
            finished = []
            for row in batch.to_dict("records"):
                index = int(row["index"])
                if index in seen:  # a retried batch's row that already arrived
                    continue
                seen.add(index)
                finished.append(f"{scope}:{row['key']}")
                result = _result(row, examples[index])
                bar.update(ok=result.ok)
                yield result, str(row["node"]), json.loads(row["usage"])
            coordinator.forget.remote(finished)
    finally:
        bar.close()
        ray.kill(coordinator)


def start_coordinator(ray: Any, cap: int | None, ttl: float) -> Any:
    """The run's coordinator actor, on the driver's node: it lives and dies with the driver."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(Coordinator).options(num_cpus=0, scheduling_strategy=here)
    return actor.remote(cap, ttl)


def endpoint_cap(options: RayOptions, spec: LMSpec) -> int:
    """Requests in flight allowed at the endpoint across the cluster (0: no shared cap)."""
    if options.max_concurrency is not None:
        return options.max_concurrency
    return int(spec.limits.get("max_concurrency", 32))


def _result(row: dict[str, Any], example: dict[str, Any]) -> BatchResult:
    outputs = json.loads(row["outputs"]) if row["outputs"] is not None else None
    error = json.loads(row["error"]) if row["error"] is not None else None
    return BatchResult(
        index=int(row["index"]),
        example=example,
        prediction=Prediction(outputs) if outputs is not None else None,
        error=error,
    )


def _public(
    result: BatchResult,
    items: list[dict[str, Any]],
    *,
    node: str | None,
    usage: dict[str, float],
) -> dict[str, Any]:
    prediction = result.prediction
    return {
        "index": result.index,
        "inputs": items[result.index],
        "outputs": dict(prediction) if prediction is not None else None,
        "error": result.error,
        "usage": usage,
        "node": node,
    }
