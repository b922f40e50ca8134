"""Putting documents into a retriever: chunking, stable ids, batched embedding.

:func:`index_documents` splits each document into overlapping chunks of whole
sentences, gives every chunk an id derived from its document id, position and
text, and writes only the chunks the store does not hold yet. Indexing the same
documents twice therefore adds nothing, and a changed document replaces its old
chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval.chroma import ChromaRetriever
from rhizome.tools.retrieval.embeddings import Embedder
from rhizome.tools.retrieval.retrievers import InMemoryRetriever, document_id

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

__all__ = ("IndexStats", "chunk_text", "index_documents")

logger = logging.getLogger("rhizome.index")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_RESERVED = ("id", "text", "title", "metadata")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndexStats:
    """What one :func:`index_documents` call did.

    Attributes:
        documents: Documents read.
        chunks: Chunks those documents were split into.
        added: Chunks written (new or changed).
        unchanged: Chunks already stored with the same id, skipped.
        removed: Stale chunks of re-indexed documents deleted.
    """

    documents: int = 0
    chunks: int = 0
    added: int = 0
    unchanged: int = 0
    removed: int = 0


class _Store(Protocol):
    def existing_ids(self, ids: Iterable[str]) -> set[str]: ...

    def ids_where(self, where: Mapping[str, Any]) -> set[str]: ...

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        embeddings: Sequence[Sequence[float]] | None = None,
    ) -> None: ...

    def delete(self, ids: Iterable[str]) -> None: ...


class _ChromaStore:
    """The :class:`_Store` view of a chromadb collection."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        return set(self.collection.get(ids=list(ids), include=[])["ids"])

    def ids_where(self, where: Mapping[str, Any]) -> set[str]:
        return set(self.collection.get(where=dict(where), include=[])["ids"])

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        embeddings: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if embeddings is None:
            raise ConfigError("chroma collections need embeddings; pass embedder=...")
        self.collection.upsert(
            ids=list(ids),
            documents=list(texts),
            metadatas=[dict(m) for m in metadatas],
            embeddings=[list(v) for v in embeddings],  # type: ignore[arg-type]
        )

    def delete(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        if wanted:
            self.collection.delete(ids=wanted)


@dataclasses.dataclass(frozen=True)
class _Chunk:
    id: str
    doc_id: str
    text: str
    metadata: dict[str, Any]


def chunk_text(text: str, *, chunk_size: int = 200, overlap: int = 40) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_size`` words, cut between sentences.

    Consecutive chunks share up to ``overlap`` words. A sentence longer than a
    chunk is cut between words. A text that fits in one chunk is returned as is.
    """
    if chunk_size < 1 or not 0 <= overlap < chunk_size:
        raise ConfigError(
            f"need chunk_size >= 1 and 0 <= overlap < chunk_size; got {chunk_size}, {overlap}"
        )
    if len(text.split()) <= chunk_size:
        return [text.strip()] if text.strip() else []
    pieces: list[list[str]] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        pieces += [words[i : i + chunk_size] for i in range(0, len(words), chunk_size)]
    chunks: list[str] = []
    current: list[str] = []
    fresh = False
    for piece in pieces:
        if current and len(current) + len(piece) > chunk_size:
            chunks.append(" ".join(current))
            keep = min(overlap, chunk_size - len(piece))
            current, fresh = (current[-keep:] if keep > 0 else []), False
        current += piece
        fresh = fresh or bool(piece)
    if fresh:
        chunks.append(" ".join(current))
    return chunks


def _document(doc: str | Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """Read one document into (doc id, title, text, metadata)."""
    if isinstance(doc, str):
        doc = {"text": doc}
    if not isinstance(doc, Mapping) or "text" not in doc:
        keys = sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__
        raise ConfigError(f"a document is a string or a dict with a 'text' key; got {keys}")
    text = str(doc["text"])
    doc_id = document_id(doc, text)
    title = str(doc.get("title") or "")
    meta = {k: v for k, v in doc.items() if k not in _RESERVED and _scalar(v)}
    meta.update(doc.get("metadata") or {})
    return doc_id, title, text, meta


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _chunks(
    doc: str | Mapping[str, Any], *, chunk_size: int, overlap: int, title_in_text: bool
) -> tuple[str, list[_Chunk]]:
    doc_id, title, text, meta = _document(doc)
    out = []
    for index, piece in enumerate(chunk_text(text, chunk_size=chunk_size, overlap=overlap)):
        stored = f"{title} | {piece}" if title and title_in_text else piece
        key = f"{doc_id}\x1f{index}\x1f{stored}".encode()
        chunk_meta = {**meta, "doc_id": doc_id, "chunk": index}
        if title:
            chunk_meta["title"] = title
        out.append(_Chunk(hashlib.sha256(key).hexdigest()[:32], doc_id, stored, chunk_meta))
    return doc_id, out


def _resolve(
    target: ChromaRetriever | InMemoryRetriever | Collection, embedder: Embedder | None
) -> tuple[_Store, Embedder | None]:
    if isinstance(target, InMemoryRetriever):
        return target, embedder or target.embedder
    if isinstance(target, ChromaRetriever):
        return _ChromaStore(target.get_collection()), embedder or target.embedder
    from chromadb.api.models.Collection import Collection

    if isinstance(target, Collection):
        if embedder is None:
            saved = target.configuration.get("embedding_function")
            embedder = saved if isinstance(saved, Embedder) else None
        if embedder is None:
            raise ConfigError(
                f"collection {target.name!r} has no rhizome embedder; pass "
                "index_documents(..., embedder=MiniLMEmbedder())"
            )
        return _ChromaStore(target), embedder
    raise ConfigError(
        "index_documents writes to a ChromaRetriever, an InMemoryRetriever or a chromadb "
        f"Collection; got {type(target).__name__}"
    )


class _Progress:
    """One line rewritten in place on a terminal; in a log, a line every ``LOG_EVERY`` seconds.

    A long indexing job run under nohup, a scheduler or CI writes to a file:
    there, a new line (and a log record on the ``rhizome.index`` logger) says
    how far it got and how fast, instead of silence until the end.
    """

    LOG_EVERY = 10.0

    def __init__(self, enabled: bool | None) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = True if enabled is None else enabled
        self.start = self.last = time.monotonic()

    def show(self, stats: IndexStats, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not (self.tty or final or now - self.last >= self.LOG_EVERY):
            return
        self.last = now
        rate = stats.documents / max(now - self.start, 1e-9)
        line = (
            f"indexing: {stats.documents} documents, {stats.chunks} chunks "
            f"({stats.added} added, {stats.unchanged} unchanged), {rate:.1f} documents/s"
        )
        if not self.tty:
            logger.info("%s", line)
            sys.stderr.write(line + "\n")
        else:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        sys.stderr.flush()


def index_documents(
    target: ChromaRetriever | InMemoryRetriever | Collection,
    documents: Iterable[str | Mapping[str, Any]],
    *,
    embedder: Embedder | None = None,
    chunk_size: int = 200,
    overlap: int = 40,
    batch_size: int = 64,
    title_in_text: bool = True,
    prune: bool = True,
    progress: bool | None = None,
) -> IndexStats:
    """Chunk, embed and store ``documents``, skipping chunks already stored.

    Blocking: call it from a script, or from async code through
    ``anyio.to_thread.run_sync``.

    Args:
        target: Where to write: a retriever, or a chromadb collection.
        documents: Strings, or dicts with ``text`` and optionally ``id``, ``title``,
            ``metadata`` (other scalar keys are kept as metadata too). Without an
            ``id`` a document is identified by its text.
        embedder: Overrides the target's embedder.
        chunk_size: Words per chunk at most.
        overlap: Words shared by consecutive chunks.
        batch_size: Chunks embedded and written per call.
        title_in_text: Store ``"title | chunk"`` so the title is searchable too.
        prune: Delete chunks of a re-indexed document that it no longer has.
        progress: Show progress on stderr (a line rewritten in place on a terminal,
            else a line every 10 s and at the end); False for none.

    Returns:
        Counts of documents, chunks, and chunks added, unchanged and removed.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    store, embedder = _resolve(target, embedder)
    state = _Run(store, embedder, batch_size=batch_size, prune=prune)
    shown = _Progress(progress)
    pending: list[_Chunk] = []
    pending_docs: list[str] = []
    for doc in documents:
        doc_id, chunks = _chunks(
            doc, chunk_size=chunk_size, overlap=overlap, title_in_text=title_in_text
        )
        state.documents += 1
        state.seen.setdefault(doc_id, set()).update(c.id for c in chunks)
        pending += chunks
        pending_docs.append(doc_id)
        if len(pending) >= batch_size:
            state.flush(pending, pending_docs)
            pending, pending_docs = [], []
            shown.show(state.stats())
    state.flush(pending, pending_docs)
    shown.show(state.stats(), final=True)
    return state.stats()


class _Run:
    """Counters and the write path of one :func:`index_documents` call."""

    def __init__(
        self, store: _Store, embedder: Embedder | None, *, batch_size: int, prune: bool
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.batch_size = batch_size
        self.prune = prune
        self.seen: dict[str, set[str]] = {}
        self.documents = self.chunks = self.added = self.unchanged = self.removed = 0

    def stats(self) -> IndexStats:
        return IndexStats(
            documents=self.documents,
            chunks=self.chunks,
            added=self.added,
            unchanged=self.unchanged,
            removed=self.removed,
        )

    def flush(self, chunks: list[_Chunk], doc_ids: list[str]) -> None:
        if chunks:
            self._write_new(chunks)
        if self.prune and doc_ids:
            wanted = sorted(set(doc_ids))
            stored = self.store.ids_where({"doc_id": {"$in": wanted}})
            stale = stored - set().union(*(self.seen[d] for d in wanted))
            self.store.delete(stale)
            self.removed += len(stale)

    def _write_new(self, chunks: list[_Chunk]) -> None:
        unique = list({c.id: c for c in chunks}.values())
        self.chunks += len(chunks)
        existing = self.store.existing_ids([c.id for c in unique])
        new = [c for c in unique if c.id not in existing]
        self.unchanged += len(chunks) - len(new)
        for start in range(0, len(new), self.batch_size):
            self._write(new[start : start + self.batch_size])

    def _write(self, batch: list[_Chunk]) -> None:
        texts = [c.text for c in batch]
        vectors = self.embedder.embed(texts) if self.embedder is not None else None
        self.store.upsert([c.id for c in batch], texts, [c.metadata for c in batch], vectors)
        self.added += len(batch)
