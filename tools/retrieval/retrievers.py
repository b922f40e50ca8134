"""Retrievers: the :class:`Retriever` protocol, :class:`Passage` and an in-memory store.

A retriever answers ``await retriever.search(query, k, where=...)`` with up to
``k`` :class:`Passage` s, best first. Implementations:

* :class:`~rhizome.tools.retrieval.chroma.ChromaRetriever` — chromadb on disk, in process
  or over HTTP, with the offline MiniLM embedder;
* :class:`~rhizome.tools.retrieval.colbert.ColBERTv2` — a client for the ColBERTv2 HTTP
  search servers the DSPy tutorials use;
* :class:`InMemoryRetriever` — BM25 or embeddings over a list held in memory,
  for tests and small corpora.

``where`` filters use chromadb's metadata filter language: ``{"title": "X"}``,
``{"year": {"$gte": 2000}}``, ``{"$and": [...]}``, ``{"$or": [...]}``, and the
operators ``$eq $ne $gt $gte $lt $lte $in $nin``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import numpy as np

from rhizome.engine.errors import ConfigError, RhizomeError

if TYPE_CHECKING:
    from rhizome.tools.retrieval.embeddings import Embedder

__all__ = (
    "InMemoryRetriever",
    "Passage",
    "Retriever",
    "RetrieverError",
    "check_k",
    "document_id",
    "matches",
)


class RetrieverError(RhizomeError, RuntimeError):
    """A retriever's back-end failed (server unreachable, malformed reply, store error)."""


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrieved passage.

    Attributes:
        id: The passage's id in its store.
        text: The passage text.
        score: Relevance, higher is better; comparable only within one retriever.
        metadata: Whatever the store keeps with the passage (title, doc id, chunk).
    """

    id: str
    text: str
    score: float = 0.0
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def title(self) -> str:
        """The ``title`` metadata ("" when the store keeps none)."""
        return str(self.metadata.get("title") or "")


@runtime_checkable
class Retriever(Protocol):
    """Anything that finds passages for a query."""

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        """Return up to ``k`` passages for ``query``, best first.

        Args:
            query: The text to search for.
            k: How many passages to return at most.
            where: A metadata filter (chromadb's filter language), or None.
        """
        ...


def check_k(k: int) -> int:
    """Validate a passage count."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number >= 1, got {k!r}")
    return k


def document_id(doc: Mapping[str, Any], text: str) -> str:
    """A document's ``id``, or one derived from its ``text`` so the same text keeps one id."""
    return str(doc.get("id") or hashlib.sha256(text.encode()).hexdigest()[:16])


# --- metadata filters -------------------------------------------------------------------

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def matches(metadata: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """True when ``metadata`` satisfies the chromadb-style filter ``where``.

    Raises:
        ConfigError: The filter uses an unknown operator.
    """
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            ok = all(matches(metadata, c) for c in cond)
        elif key == "$or":
            ok = any(matches(metadata, c) for c in cond)
        elif key.startswith("$"):
            raise ConfigError(f"unknown filter operator {key!r}; use $and or $or at top level")
        else:
            ok = _match_field(metadata.get(key), cond)
        if not ok:
            return False
    return True


def _match_field(value: Any, cond: Any) -> bool:
    if not isinstance(cond, Mapping):
        return bool(value == cond)
    for op, operand in cond.items():
        if op not in _COMPARISONS:
            valid = ", ".join(_COMPARISONS)
            raise ConfigError(f"unknown filter operator {op!r}; valid operators: {valid}")
        try:
            if not _COMPARISONS[op](value, operand):
                return False
        except TypeError:
            return False
    return True


# --- in-memory store ----------------------------------------------------------------------

_TOKEN = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclasses.dataclass
class _Entry:
    text: str
    metadata: dict[str, Any]
    tokens: Counter[str]
    vector: list[float] | None = None


class InMemoryRetriever:
    """Passages held in a dict, ranked by BM25 or, given an embedder, by cosine.

    Texts can be given at construction or added later with :meth:`add` or
    :func:`~rhizome.tools.retrieval.indexing.index_documents`. Thread-safe.

    Args:
        documents: Initial passages: strings, or dicts with ``text`` and
            optionally ``id`` and ``metadata``.
        embedder: Rank by cosine similarity of these embeddings instead of BM25.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(
        self,
        documents: Iterable[str | Mapping[str, Any]] = (),
        *,
        embedder: Embedder | None = None,
        k1: float = 1.5,
        b: float = 0.75,
    ) -> None:
        self.embedder = embedder
        self.k1 = k1
        self.b = b
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.add(documents)

    def add(self, documents: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Add passages (strings or ``{"text", "id"?, "title"?, "metadata"?}`` dicts); return ids.

        Passages without an id get one derived from their text, so adding the
        same text twice keeps one copy. A ``title`` is kept in the metadata.
        """
        ids, texts, metas = [], [], []
        for doc in documents:
            if isinstance(doc, str):
                doc = {"text": doc}
            if "text" not in doc:
                raise ConfigError(f"a document needs a 'text' key; got keys {sorted(doc)}")
            text = str(doc["text"])
            ids.append(document_id(doc, text))
            texts.append(text)
            meta = dict(doc.get("metadata") or {})
            if doc.get("title"):
                meta.setdefault("title", str(doc["title"]))
            metas.append(meta)
        self.upsert(ids, texts, metas)
        return ids

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        embeddings: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Insert or replace passages by id (blocking when embeddings must be computed)."""
        if embeddings is None and self.embedder is not None and texts:
            embeddings = self.embedder.embed(list(texts))
        with self._lock:
            for i, (pid, text, meta) in enumerate(zip(ids, texts, metadatas, strict=True)):
                vec = list(embeddings[i]) if embeddings is not None else None
                self._entries[pid] = _Entry(text, dict(meta), Counter(_tokens(text)), vec)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove passages by id (unknown ids are ignored)."""
        with self._lock:
            for pid in ids:
                self._entries.pop(pid, None)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        with self._lock:
            return {pid for pid in ids if pid in self._entries}

    def ids_where(self, where: Mapping[str, Any]) -> set[str]:
        """Ids of the stored passages whose metadata matches ``where``."""
        with self._lock:
            return {pid for pid, e in self._entries.items() if matches(e.metadata, where)}

    def __len__(self) -> int:
        return len(self._entries)

    async def count(self) -> int:
        """How many passages are stored."""
        return len(self._entries)

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        """Return up to ``k`` passages for ``query``, best first (ties by id)."""
        check_k(k)
        return await anyio.to_thread.run_sync(self._search, query, k, where)

    def _search(self, query: str, k: int, where: dict[str, Any] | None) -> list[Passage]:
        with self._lock:
            entries = {pid: e for pid, e in self._entries.items() if matches(e.metadata, where)}
        if self.embedder is not None:
            scores = self._cosine(query, entries)
        else:
            scores = self._bm25(query, entries)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [
            Passage(pid, entries[pid].text, s, dict(entries[pid].metadata)) for pid, s in ranked
        ]

    def _bm25(self, query: str, entries: Mapping[str, _Entry]) -> dict[str, float]:
        n = len(entries)
        if n == 0:
            return {}
        avg_len = sum(e.tokens.total() for e in entries.values()) / n or 1.0
        terms = set(_tokens(query))
        df = {t: sum(1 for e in entries.values() if t in e.tokens) for t in terms}
        scores: dict[str, float] = {}
        for pid, e in entries.items():
            length_norm = self.k1 * (1 - self.b + self.b * e.tokens.total() / avg_len)
            total = 0.0
            for t in terms:
                tf = e.tokens.get(t, 0)
                if tf:
                    idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                    total += idf * tf * (self.k1 + 1) / (tf + length_norm)
            if total > 0:
                scores[pid] = total
        return scores

    def _cosine(self, query: str, entries: Mapping[str, _Entry]) -> dict[str, float]:
        assert self.embedder is not None  # checked by the caller
        pids = [pid for pid, e in entries.items() if e.vector is not None]
        if not pids:
            return {}
        matrix = np.array([entries[pid].vector for pid in pids], dtype=np.float32)
        q = np.array(self.embedder.embed([query])[0], dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(q) or 1.0)
        sims = matrix @ q / np.clip(norms, 1e-12, None)
        return {pid: float(s) for pid, s in zip(pids, sims, strict=True)}
