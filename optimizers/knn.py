"""KNNFewShot: each call's demos are the trainset examples nearest to its input.

The optimizer builds a demo pool per LM node (labelled demos, or demos
bootstrapped from successful traces when a metric is given), embeds each
demo's input fields once, and gives every predictor a ``demo_selector``. At
run time the predictor embeds its current input and uses the ``k`` most
similar demos (cosine similarity, nearest first) instead of its static demos.

The selector lives on the predictor object, not in saved programs: a saved
KNN program loads as zero-shot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from rhizome.engine.call.parsing import format_value
from rhizome.engine.errors import ConfigError
from rhizome.optimizers.base import as_examples, labeled_demos
from rhizome.optimizers.bootstrap import BootstrapFewShot

if TYPE_CHECKING:
    from rhizome.engine.call.predictor import Predictor
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph
    from rhizome.optimizers.metrics import Metric
    from rhizome.tools.retrieval.embeddings import Embedder

__all__ = ("DemoSelector", "KNNFewShot", "demo_text", "embed_texts")


QUERY_CACHE = 4096


def demo_text(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The text embedded for a demo or an input: its ``keys`` fields, one per line."""
    return "\n".join(f"{k}: {format_value(values[k])}" for k in keys if k in values)


class DemoSelector:
    """Picks the ``k`` demos of a pool nearest to a call's input.

    Args:
        pool: Candidate demos (dicts of signature fields).
        keys: The input fields compared.
        k: Demos per call.
        embedder: Turns texts into vectors (``embed(texts) -> list[list[float]]``).
        vectors: Unit-normalised embeddings of the pool, one row per demo.
        skip_same: Skip demos whose compared fields equal the input's (so
            scoring on the trainset does not copy answers).
    """

    def __init__(
        self,
        pool: Sequence[dict[str, Any]],
        *,
        keys: Sequence[str],
        k: int,
        embedder: Embedder,
        vectors: np.ndarray,
        skip_same: bool = True,
    ) -> None:
        self.pool = list(pool)
        self.keys = tuple(keys)
        self.k = k
        self.embedder = embedder
        self.vectors = vectors
        self.skip_same = skip_same
        self._texts = [demo_text(d, self.keys) for d in self.pool]
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    async def __call__(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The demos for one call, nearest first."""
        text = demo_text(inputs, self.keys)
        query = await self._embed(text)
        return [dict(self.pool[i]) for i in self.nearest(query, text)]

    def nearest(self, query: np.ndarray, text: str = "") -> list[int]:
        """Pool indices of the ``k`` nearest demos to ``query`` (ties: pool order)."""
        if not self.pool:
            return []
        sims = self.vectors @ query
        order = sorted(range(len(self.pool)), key=lambda i: (-float(sims[i]), i))
        if self.skip_same:
            order = [i for i in order if self._texts[i] != text]
        return order[: self.k]

    async def _embed(self, text: str) -> np.ndarray:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        vector: np.ndarray = (await embed_texts(self.embedder, [text]))[0]
        self._cache[text] = vector
        if len(self._cache) > QUERY_CACHE:
            self._cache.popitem(last=False)
        return vector


async def embed_texts(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Unit-normalised embeddings of ``texts`` (computed in a worker thread)."""
    if not texts:
        return np.zeros((0, 0))
    rows = await anyio.to_thread.run_sync(embedder.embed, texts)
    matrix = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


class KNNFewShot:
    """Give every LM node demos chosen per input by embedding similarity.

    Args:
        k: Demos per call.
        trainset: Examples the demo pool is made from.
        embedder: Turns texts into vectors, e.g. ``MiniLMEmbedder()`` (tests use
            ``HashEmbedder()``).
        metric: If given, the pool holds demos bootstrapped from traces that
            pass it (every node's intermediate fields included), followed by
            labelled demos of the other examples; else labelled demos only.
        keys: Input fields compared per predictor path; by default the
            predictor's inputs that every demo of its pool has.
        skip_same: Skip demos whose compared fields equal the current input's.
        threshold: Score at or above which a bootstrap trace passes.
        concurrency: Examples in flight while bootstrapping.
        lm: Default LM for bootstrapping runs.
        seed: Bootstrap shuffle seed.
    """

    def __init__(
        self,
        k: int,
        trainset: Sequence[Example | Mapping[str, Any]],
        *,
        embedder: Embedder,
        metric: Metric | None = None,
        keys: Mapping[str, Sequence[str]] | None = None,
        skip_same: bool = True,
        threshold: float = 1.0,
        concurrency: int = 16,
        lm: LM | None = None,
        seed: int = 0,
    ) -> None:
        if k < 1:
            raise ConfigError(f"KNNFewShot(k={k}) must be at least 1")
        self.k = k
        self.trainset = as_examples(trainset)
        self.embedder = embedder
        self.metric = metric
        self.keys = {p: list(v) for p, v in (keys or {}).items()}
        self.skip_same = skip_same
        self.threshold = threshold
        self.concurrency = concurrency
        self.lm = lm
        self.seed = seed

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]] | None = None
    ) -> Graph:
        """Return a copy of ``graph`` whose predictors select demos per input.

        ``trainset`` replaces the one given to the constructor when not None.
        """
        examples = as_examples(trainset) if trainset is not None else self.trainset
        pools = await self._pools(graph, examples)
        new = graph.with_parameters({f"{path}.demos": [] for path in pools})
        for path, predictor in new.named_predictors():
            pool = pools[path]
            keys = self._keys(path, predictor, pool)
            vectors = await embed_texts(self.embedder, [demo_text(d, keys) for d in pool])
            # The selector is run-time machinery, not a parameter: shared by copies, never saved.
            predictor.demo_selector = DemoSelector(
                pool,
                keys=keys,
                k=self.k,
                embedder=self.embedder,
                vectors=vectors,
                skip_same=self.skip_same,
            )
        return new

    async def _pools(
        self, graph: Graph, examples: list[Example]
    ) -> dict[str, list[dict[str, Any]]]:
        if self.metric is None:
            return {path: labeled_demos(p, examples) for path, p in graph.named_predictors()}
        boot = BootstrapFewShot(
            self.metric,
            threshold=self.threshold,
            max_bootstrapped_demos=len(examples),
            max_labeled_demos=len(examples),
            concurrency=self.concurrency,
            lm=self.lm,
            seed=self.seed,
            progress=False,
        )
        booted = await boot.optimize(graph, examples)
        return {path: list(p.demos) for path, p in booted.named_predictors()}

    def _keys(self, path: str, predictor: Predictor, pool: list[dict[str, Any]]) -> list[str]:
        if path in self.keys:
            return self.keys[path]
        shared = [k for k in predictor.signature.inputs if all(k in d for d in pool)]
        if pool and not shared:
            raise ConfigError(
                f"the demos for {path!r} share none of its inputs "
                f"({', '.join(predictor.signature.inputs)}); pass keys={{{path!r}: [...]}}"
            )
        return shared
