"""Embedding spread over Ray actors, for indexing a large corpus.

:class:`RayEmbedder` is an ``Embedder`` (``embed(texts) -> vectors``) whose
texts are cut into slices and embedded by a pool of Ray actors, each of which
builds its own embedder once from a ``module:factory`` name (the bundled int8
MiniLM by default) and keeps it loaded. The vectors come back in input order,
the same as the embedder gives in one process::

    with RayEmbedder(actors=8) as embedder:
        index_documents(retriever, documents, embedder=embedder, batch_size=4096)

``index_documents`` hands the embedder ``batch_size`` chunks at a time, so a
large ``batch_size`` is what keeps every actor busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rhizome.engine.distributed.runner import connect
from rhizome.engine.errors import ConfigError

__all__ = ("DEFAULT_EMBEDDER", "EmbedActor", "RayEmbedder")

DEFAULT_EMBEDDER = "rhizome.tools.retrieval.embeddings:MiniLMEmbedder"


class EmbedActor:
    """One actor of the pool: an embedder built from its factory name, kept loaded.

    Args:
        factory: ``"module:factory"`` returning an object with ``embed(texts)``.
    """

    def __init__(self, factory: str) -> None:
        import ray

        from rhizome.engine.graphs.program import import_module, parse_spec

        module, attribute = parse_spec(factory)
        self.embedder = getattr(import_module(module), attribute)()
        self.node = ray.get_runtime_context().get_node_id()

    def embed(self, texts: list[str]) -> tuple[str, list[list[float]]]:
        """The vectors of ``texts``, and the node that made them."""
        return self.node, self.embedder.embed(texts)


class RayEmbedder:
    """An embedder whose work runs on a pool of Ray actors (see the module docstring).

    Args:
        factory: ``"module:factory"`` building the embedder on each actor.
        actors: Actors in the pool.
        slice_size: Texts per actor call.
        num_cpus: CPUs each actor reserves.
        address: The Ray cluster to join; None starts or reuses a local one.

    Attributes:
        nodes: The Ray node ids that embedded the last call's slices.
    """

    def __init__(
        self,
        factory: str = DEFAULT_EMBEDDER,
        *,
        actors: int = 2,
        slice_size: int = 128,
        num_cpus: float = 1.0,
        address: str | None = None,
    ) -> None:
        if actors < 1 or slice_size < 1:
            raise ConfigError(f"actors and slice_size must be >= 1, got {actors}, {slice_size}")
        self.factory = factory
        self.actors = actors
        self.slice_size = slice_size
        self.num_cpus = num_cpus
        self.address = address
        self.nodes: list[str] = []
        self._pool: list[Any] = []
        self._ray: Any = None

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; slices embedded by the actors at once."""
        if not texts:
            return []
        pool = self._started()
        step = self.slice_size
        calls = [
            pool[n % len(pool)].embed.remote(list(texts[start : start + step]))
            for n, start in enumerate(range(0, len(texts), step))
        ]
        done = self._ray.get(calls)
        self.nodes = [node for node, _ in done]
        return [vector for _, vectors in done for vector in vectors]

    def close(self) -> None:
        """Stop the actors."""
        for actor in self._pool:
            self._ray.kill(actor)
        self._pool = []

    def __enter__(self) -> RayEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _started(self) -> list[Any]:
        if not self._pool:
            self._ray = ray = connect(self.address, {})
            actor = ray.remote(EmbedActor).options(
                num_cpus=self.num_cpus,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy="SPREAD",
            )
            self._pool = [actor.remote(self.factory) for _ in range(self.actors)]
        return self._pool
