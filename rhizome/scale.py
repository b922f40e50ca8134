"""Past one machine: run batches, evaluations and optimizer trials on a Ray cluster.

Three lines run a graph over a dataset on a cluster::

    from rhizome.scale import RayOptions, ray_batch

    rows = ray_batch("myapp.graphs:build", "questions.jsonl", lm=lm,
                     options=RayOptions(address="auto", actors=8), output="answers.parquet")

Every worker actor rebuilds the graph from its factory (a module-level
function, or its ``"module:function"`` name) and the saved parameters JSON,
and its LM from the LM's settings; the API key reaches workers through the
environment variable the LM names (``api_key_env``), never inside a pickled
object. The LM's ``max_concurrency`` holds for the whole cluster, a 429 slows
every worker, a dead worker's examples run again elsewhere, and ``run_dir``
resumes an interrupted run as ``graph.batch`` does.

``ray_dataset`` gives the same results as a lazy Ray Dataset of rows
(with a per-example ``error`` column), to chain with other Ray Data steps or
write with ``write_parquet``.

:class:`RayExecutor` keeps such a pool for evaluations and optimizer trials:
``Evaluate(..., executor=pool)`` and ``JointSearch(..., executor=pool)``.
:class:`RayEmbedder` spreads the embedding of ``index_documents`` over actors.

Ray is an optional extra: ``pip install "rhizome[ray]"``. ``import rhizome``
never imports it; calling into Ray without it raises
:class:`RayMissingError` naming the extra.
"""

from __future__ import annotations

from rhizome.engine.distributed.embedding import RayEmbedder as RayEmbedder
from rhizome.engine.distributed.executor import RayExecutor as RayExecutor
from rhizome.engine.distributed.ray_import import RayMissingError as RayMissingError
from rhizome.engine.distributed.runner import RayOptions as RayOptions
from rhizome.engine.distributed.runner import ray_batch as ray_batch
from rhizome.engine.distributed.runner import ray_dataset as ray_dataset

__all__ = (
    "RayEmbedder",
    "RayExecutor",
    "RayMissingError",
    "RayOptions",
    "ray_batch",
    "ray_dataset",
)
