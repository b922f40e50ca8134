"""Indexing rate of ``index_documents`` with the bundled int8 MiniLM, and recall at equal settings.

Rate: 1,000 abstract-like documents (40 to 250 words, built from the bundled
two-hop corpus with a fixed seed) indexed into an ``InMemoryRetriever`` with
the MiniLM embedder, for each setting below; documents/s and chunks/s, best of
``--reps`` interleaved repetitions (the machine is shared). Settings:

- ``threads``: onnxruntime intra-op threads per inference call;
- ``embed_batch``: texts per inference call (each padded to its longest);
- ``window``: chunks handed to the embedder at once by ``index_documents``
  (its ``batch_size``); the embedder sorts each window by length before
  cutting it into inference batches, so a larger window pads less.

Recall: the 298-passage corpus indexed with the default and the fastest
setting, then recall@3 of the first supporting passage for the 400 labelled
questions (dev, test, train); the settings only change how texts are batched,
so recall must be equal. Chunk size: recall@3 on the same queries with
chunk_size 50, 100 and 200 over the abstract-like documents (each keeps the
passages it was built from, so a hit is a chunk holding the supporting text).

Run: ``python bench/indexing_rate.py [--docs 1000] [--reps 2] [--out bench/results_indexing.json]``;
with ``--ray``, only one process against ``RayEmbedder`` with 1 and 2 actors
(``results_indexing_ray.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from rhizome.datasets import load_multihop
from rhizome.datasets.multihop import load_multihop_corpus
from rhizome.tools.retrieval.embeddings import Embedder, MiniLMEmbedder
from rhizome.tools.retrieval.indexing import index_documents
from rhizome.tools.retrieval.retrievers import InMemoryRetriever

HERE = Path(__file__).resolve().parent

SETTINGS = {
    "default (threads 1, embed_batch 32, window 64)": (1, 32, 64),
    "threads 2": (2, 32, 64),
    "window 512": (1, 32, 512),
    "threads 2, window 512": (2, 32, 512),
    "embed_batch 16, window 512": (1, 16, 512),
    "embed_batch 64, window 512": (1, 64, 512),
}


def abstracts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` abstract-like documents of 40-250 words, each made of corpus passages."""
    corpus = load_multihop_corpus()
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        target = rng.randint(40, 250)
        parts: list[str] = []
        while sum(len(p.split()) for p in parts) < target:
            parts.append(rng.choice(corpus)["text"])
        docs.append({"id": f"d{i}", "title": f"Doc {i}", "text": " ".join(parts)})
    return docs


def rate(docs: list[dict[str, str]], threads: int, embed_batch: int, window: int) -> dict[str, Any]:
    """Index ``docs`` once with one setting; documents/s and chunks/s."""
    embedder = MiniLMEmbedder(threads=threads, batch_size=embed_batch)
    embedder.load()
    store = InMemoryRetriever(embedder=embedder)
    start = time.perf_counter()
    stats = index_documents(store, docs, batch_size=window, progress=False)
    wall = time.perf_counter() - start
    return {"docs_per_s": len(docs) / wall, "chunks_per_s": stats.chunks / wall, "wall_s": wall}


def ray_rate(docs: list[dict[str, str]], actors: int) -> dict[str, Any]:
    """Index ``docs`` with the embedding spread over ``actors`` Ray actors (pool started first)."""
    from rhizome.scale import RayEmbedder

    with RayEmbedder(actors=actors, slice_size=64) as embedder:
        embedder.embed(["warm up"] * actors * 2)  # start the actors and load the model
        store = InMemoryRetriever(embedder=embedder)
        start = time.perf_counter()
        stats = index_documents(store, docs, batch_size=1024, progress=False)
        wall = time.perf_counter() - start
    return {"docs_per_s": len(docs) / wall, "chunks_per_s": stats.chunks / wall, "wall_s": wall}


def recall_at_3(threads: int, embed_batch: int, window: int) -> float:
    """Recall@3 of the first supporting passage over the 400 labelled questions."""
    return embedder_recall_at_3(MiniLMEmbedder(threads=threads, batch_size=embed_batch), window)


def embedder_recall_at_3(embedder: Embedder, window: int = 64) -> float:
    """Recall@3 of the first supporting passage over the 400 labelled questions, any embedder."""
    import anyio

    store = InMemoryRetriever(embedder=embedder)
    corpus = [
        {"id": p["id"], "title": p["title"], "text": p["text"]} for p in load_multihop_corpus()
    ]
    index_documents(store, corpus, batch_size=window, progress=False)
    questions = [e for split in ("dev", "test", "train") for e in load_multihop(split)]

    async def hits() -> int:
        found = 0
        for example in questions:
            passages = await store.search(example.question, k=3)
            titles = {p.metadata.get("title") for p in passages}
            found += example.supporting_titles[0] in titles
        return found

    return anyio.run(hits) / len(questions)


def chunk_recall(docs: list[dict[str, str]], chunk_size: int) -> float:
    """Recall@3 over abstract-like documents chunked at ``chunk_size`` words.

    A question is answered when a retrieved chunk contains its first supporting
    passage's text.
    """
    import anyio

    texts = {p["title"]: p["text"] for p in load_multihop_corpus()}
    store = InMemoryRetriever(embedder=MiniLMEmbedder())
    index_documents(store, docs, chunk_size=chunk_size, overlap=chunk_size // 5, progress=False)
    questions = [e for split in ("dev", "test") for e in load_multihop(split)]

    async def hits() -> int:
        found = 0
        for example in questions:
            passages = await store.search(example.question, k=3)
            found += any(texts[example.supporting_titles[0]] in p.text for p in passages)
        return found

    return anyio.run(hits) / len(questions)


def main(argv: list[str] | None = None) -> None:
    """Measure every setting, the recall check and the chunk sizes; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results_indexing.json")
    parser.add_argument("--ray", action="store_true", help="only: one process vs 1 and 2 actors")
    args = parser.parse_args(argv)
    docs = abstracts(args.docs)
    if args.ray:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        spread = {"one_process": rate(docs, 1, 32, 1024)}
        for actors in (1, 2):
            spread[f"ray_{actors}"] = ray_rate(docs, actors)
        spread["machine"] = {"load_avg": os.getloadavg(), "docs": args.docs}
        args.out.with_name("results_indexing_ray.json").write_text(json.dumps(spread, indent=2))
        print(json.dumps(spread, indent=2))
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for _ in range(args.reps):
        for name, setting in SETTINGS.items():
            runs[name].append(rate(docs, *setting))
            print(name, json.dumps(runs[name][-1]), flush=True)
    best = {name: max(r["docs_per_s"] for r in rs) for name, rs in runs.items()}
    fastest = max(best, key=best.__getitem__)
    recall = {
        "default": recall_at_3(*SETTINGS["default (threads 1, embed_batch 32, window 64)"]),
        fastest: recall_at_3(*SETTINGS[fastest]),
    }
    chunks = {size: chunk_recall(docs[:300], size) for size in (50, 100, 200)}
    result = {
        "docs_per_s_best": best,
        "fastest": fastest,
        "recall_at_3": recall,
        "chunk_size_recall_at_3": chunks,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "docs": args.docs,
            "words_per_doc": sum(len(d["text"].split()) for d in docs) / len(docs),
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("docs_per_s_best", "recall_at_3", "chunk_size_recall_at_3")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
