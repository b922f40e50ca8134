"""index_documents and chunk_text: chunking, stable ids, re-indexing, pruning, progress."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval import indexing
from rhizome.tools.retrieval.chroma import ChromaRetriever
from rhizome.tools.retrieval.embeddings import HashEmbedder
from rhizome.tools.retrieval.indexing import IndexStats, chunk_text, index_documents
from rhizome.tools.retrieval.retrievers import InMemoryRetriever

LONG = " ".join(f"Sentence number {i} talks about topic{i} in some detail." for i in range(40))


def test_short_text_is_one_unchanged_chunk() -> None:
    assert chunk_text("  A short text.\nWith two lines.  ", chunk_size=50) == [
        "A short text.\nWith two lines."
    ]
    assert chunk_text("   ", chunk_size=5, overlap=0) == []


def test_long_text_is_cut_between_sentences_with_overlap() -> None:
    chunks = chunk_text(LONG, chunk_size=40, overlap=8)
    assert len(chunks) > 5
    assert all(len(c.split()) <= 40 for c in chunks)
    # every chunk but the first starts with words carried over from the one before
    for prev, cur in itertools.pairwise(chunks):
        assert cur.split()[:8] == prev.split()[-8:]
    # no chunk cuts a sentence except where the overlap starts
    assert all(c.endswith(".") for c in chunks)
    words = " ".join(chunks).split()
    assert all(f"topic{i}" in words for i in range(40))


def test_overlong_sentences_are_cut_between_words() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text + ". End.", chunk_size=10, overlap=0)
    assert [len(c.split()) for c in chunks] == [10, 10, 6]
    assert " ".join(chunks).split() == (text + ". End.").split()


def test_invalid_chunking_is_rejected() -> None:
    with pytest.raises(ConfigError, match="overlap < chunk_size"):
        chunk_text("x", chunk_size=10, overlap=10)


def test_in_memory_indexing_is_idempotent_and_prunes_changed_documents() -> None:
    store = InMemoryRetriever()
    docs = [{"id": "d1", "title": "Long", "text": LONG}, {"id": "d2", "text": "Short one."}]
    first = index_documents(store, docs, chunk_size=40, overlap=8, progress=False)
    assert first.documents == 2
    assert first.added == first.chunks == len(store)
    again = index_documents(store, docs, chunk_size=40, overlap=8, progress=False)
    assert again == IndexStats(documents=2, chunks=first.chunks, unchanged=first.chunks)
    changed = index_documents(
        store,
        [{"id": "d2", "text": "Short one, edited."}],
        chunk_size=40,
        overlap=8,
        progress=False,
    )
    assert (changed.added, changed.removed) == (1, 1)
    assert len(store) == first.chunks
    assert store.ids_where({"doc_id": "d2"})
    assert len(store.ids_where({"doc_id": "d2"})) == 1


async def test_chunk_metadata_and_title_prefix() -> None:
    store = InMemoryRetriever()
    index_documents(
        store,
        [{"id": "x", "title": "Kyoto", "text": "Old capital.", "year": 794, "tags": ["a"]}],
        progress=False,
    )
    (found,) = await store.search("capital", 1)
    assert found.text == "Kyoto | Old capital."
    assert found.metadata == {"doc_id": "x", "chunk": 0, "title": "Kyoto", "year": 794}
    index_documents(store, ["Bare string document."], title_in_text=False, progress=False)
    (bare,) = await store.search("bare", 1)
    assert bare.text == "Bare string document."
    assert len(str(bare.metadata["doc_id"])) == 16


def test_bad_documents_are_rejected() -> None:
    with pytest.raises(ConfigError, match="'text' key; got \\['body'\\]"):
        index_documents(InMemoryRetriever(), [{"body": "x"}], progress=False)
    with pytest.raises(ConfigError, match="got int"):
        index_documents(InMemoryRetriever(), [42], progress=False)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="ChromaRetriever, an InMemoryRetriever"):
        index_documents([], ["x"], progress=False)  # type: ignore[arg-type]


def test_progress_goes_to_stderr_when_forced(capsys: pytest.CaptureFixture[str]) -> None:
    docs = [f"document number {i}" for i in range(10)]
    index_documents(InMemoryRetriever(), docs, batch_size=4, progress=True)
    err = capsys.readouterr().err
    # Not a terminal: no carriage-return redraws, just the final count on its own line.
    assert re.fullmatch(
        r"indexing: 10 documents, 10 chunks \(10 added, 0 unchanged\), [\d.]+ documents/s\n", err
    )
    index_documents(InMemoryRetriever(), docs, progress=False)
    assert capsys.readouterr().err == ""


def test_a_long_run_logs_progress_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indexing._Progress, "LOG_EVERY", 0.0)  # every batch counts as "long"
    docs = [f"document number {i}" for i in range(12)]
    with caplog.at_level(logging.INFO, logger="rhizome.index"):
        index_documents(InMemoryRetriever(), docs, batch_size=4)  # progress left to its default
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "indexing: 4 documents",
        "indexing: 8 documents",
        "indexing: 12 documents",
        "indexing: 12 documents",
    ]
    assert [r.getMessage() for r in caplog.records] == lines


async def test_chroma_batches_and_reindexing(tmp_path: Path) -> None:
    retriever = ChromaRetriever("batches", path=tmp_path, embedder=HashEmbedder(dimension=32))
    docs = [{"id": f"d{i}", "text": f"text about item {i}", "n": i} for i in range(23)]
    stats = index_documents(retriever, docs, batch_size=5, progress=False)
    assert (stats.added, await retriever.count()) == (23, 23)
    docs[0] = {"id": "d0", "text": "a changed text"}
    stats = index_documents(retriever, docs, batch_size=5, progress=False)
    assert (stats.added, stats.unchanged, stats.removed) == (1, 22, 1)
    assert await retriever.count() == 23
    (hit,) = await retriever.search("item", 1, where={"n": 7})
    assert hit.metadata["doc_id"] == "d7"


async def test_raw_chroma_collection_needs_an_embedder(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    plain = client.create_collection("plain")
    with pytest.raises(ConfigError, match="embedder="):
        index_documents(plain, ["x"], progress=False)
    stats = index_documents(plain, ["x y", "z"], embedder=HashEmbedder(dimension=8), progress=False)
    assert stats.added == 2
    assert plain.count() == 2
    ours = client.create_collection("ours", embedding_function=HashEmbedder(dimension=8))
    assert index_documents(ours, ["x y"], progress=False).added == 1
