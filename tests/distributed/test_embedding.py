"""RayEmbedder: the bundled MiniLM on two worker nodes gives the vectors one process gives."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from rhizome.scale import RayEmbedder
from rhizome.tools.retrieval.embeddings import MiniLMEmbedder
from rhizome.tools.retrieval.indexing import index_documents
from rhizome.tools.retrieval.retrievers import InMemoryRetriever
from tests.distributed.conftest import LocalCluster

pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow

DOCS = [
    {"id": f"d{i}", "text": f"Town {i} lies on river {i % 5} and was founded in {1200 + i}."}
    for i in range(24)
]


def test_index_documents_with_embedding_on_the_cluster(ray_cluster: LocalCluster) -> None:
    texts = [d["text"] for d in DOCS]
    # one CPU each on two one-CPU nodes: the actors cannot share a node (SPREAD is best effort)
    with RayEmbedder(actors=2, slice_size=6, num_cpus=1) as embedder:
        spread = np.array(embedder.embed(texts))
        assert len(set(embedder.nodes)) == 2  # both worker nodes embedded slices
        store = InMemoryRetriever(embedder=embedder)
        stats = index_documents(store, DOCS, batch_size=24, progress=False)
        found = anyio.run(store.search, "Which town was founded in 1213?", 1)
    local = np.array(MiniLMEmbedder().embed(texts))
    assert spread.shape == local.shape
    np.testing.assert_allclose(spread, local, atol=1e-5)
    assert stats.added == 24
    assert "1213" in found[0].text
