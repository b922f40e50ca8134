"""A retriever over a chromadb collection: on disk in process, or on a chroma server.

Embeddings are always computed by rhizome's embedder (the offline MiniLM model
by default) and handed to chromadb, so chromadb's own default embedding
function — which downloads a model on first use — is never called. The
collection's saved configuration names the embedder (``"rhizome-minilm"``), and
opening a collection that was built with a different one fails with a clear
error instead of returning meaningless neighbours.

Every chromadb call blocks, so each runs in a worker thread under a
:class:`anyio.CapacityLimiter` that can be shared between retrievers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from rhizome.engine.errors import ConfigError, RhizomeError
from rhizome.tools.retrieval.embeddings import Embedder, MiniLMEmbedder
from rhizome.tools.retrieval.retrievers import Passage, RetrieverError, check_k

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ("ChromaRetriever", "ExternalEmbedding", "as_embedding_function", "default_path")


_INCLUDE: Any = ["documents", "metadatas", "distances"]


class ExternalEmbedding(EmbeddingFunction[Documents]):
    """Marks a collection whose vectors come from a custom :class:`Embedder`.

    Used when a :class:`ChromaRetriever` is given an embedder that is not itself a
    chromadb embedding function. The collection records the embedder's class
    name; rebuilt from that record it cannot embed, and says so, because
    rhizome always supplies the vectors itself.
    """

    def __init__(self, embedder: Embedder | None = None, *, label: str = "") -> None:
        self.embedder = embedder
        self.label = label or (_qualname(embedder) if embedder is not None else "unknown")

    def __call__(self, input: Documents) -> Embeddings:
        """Embed with the wrapped embedder, or fail if rebuilt from a saved config."""
        if self.embedder is None:
            raise ConfigError(
                f"this collection was embedded with {self.label}; open it with "
                f"ChromaRetriever(..., embedder={self.label.rsplit('.', 1)[-1]}(...))"
            )
        import numpy as np

        return [np.asarray(v, dtype=np.float32) for v in self.embedder.embed(list(input))]

    @staticmethod
    def name() -> str:
        """The name chromadb stores in a collection's configuration."""
        return "rhizome-external"

    def get_config(self) -> dict[str, Any]:
        """The embedder's class, recorded so a mismatch can be detected."""
        return {"embedder": self.label}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> ExternalEmbedding:
        """A placeholder that knows which embedder built the collection."""
        return ExternalEmbedding(label=str(config.get("embedder", "")))


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def as_embedding_function(embedder: Embedder) -> EmbeddingFunction[Documents]:
    """The chromadb embedding function to record for ``embedder``."""
    if isinstance(embedder, EmbeddingFunction):
        return embedder
    return ExternalEmbedding(embedder)


def _close_http_session(client: ClientAPI) -> None:
    """Close an HTTP client's connection pools once chromadb has stopped its systems.

    chromadb 1.5 stops a shared system on the last ``close()`` but leaves the
    ``httpx.Client`` of its HTTP back-end (one for the client, one for its
    internal admin client) open, so sockets leak until exit.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        identifier = getattr(owner, "_identifier", None)
        if session is not None and identifier not in SharedSystemClient._identifier_to_system:
            session.close()


def default_path() -> Path:
    """Where collections live when no path, client or host is given.

    ``$RHIZOME_DATA_DIR/chroma`` when that variable is set, else ``chroma`` in
    the user data directory.
    """
    import platformdirs

    base = os.environ.get("RHIZOME_DATA_DIR") or platformdirs.user_data_dir("rhizome")
    return Path(base) / "chroma"


class ChromaRetriever:
    """Search a chromadb collection with rhizome's embeddings.

    Give at most one of ``path`` (an on-disk database, the default being
    :func:`default_path`), ``client`` (any chromadb client), or ``host`` (a
    chroma server over HTTP). The collection is opened, or created, on first
    use.

    Args:
        collection_name: The collection (3-512 characters of ``[a-zA-Z0-9._-]``).
        path: Directory of an embedded, persistent database.
        client: A chromadb client to use as is.
        host: Host name of a chroma server.
        port: Port of the chroma server.
        ssl: Use HTTPS for the chroma server.
        embedder: Computes document and query vectors; :class:`MiniLMEmbedder` by default.
        limiter: Bounds concurrent chromadb calls; share one between retrievers
            to bound them together. A fresh limiter of 4 by default.
    """

    def __init__(
        self,
        collection_name: str = "rhizome",
        *,
        path: str | Path | None = None,
        client: ClientAPI | None = None,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        embedder: Embedder | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        given = [
            n for n, v in (("path", path), ("client", client), ("host", host)) if v is not None
        ]
        if len(given) > 1:
            raise ConfigError(
                f"ChromaRetriever takes one of path, client or host; got {' and '.join(given)}"
            )
        self.collection_name = collection_name
        self.path = Path(path) if path is not None else None
        self.host = host
        self.port = port
        self.ssl = ssl
        self.embedder: Embedder = embedder if embedder is not None else MiniLMEmbedder()
        self.limiter = limiter or anyio.CapacityLimiter(4)
        self._client = client
        self._owns_client = client is None
        self._collection: Collection | None = None
        self._space = "cosine"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = (self.host and f"{self.host}:{self.port}") or self.path or "client"
        return f"ChromaRetriever({self.collection_name!r}, {where}, embedder={self.embedder!r})"

    # --- blocking side (worker threads) ---------------------------------------------------

    def _make_client(self) -> ClientAPI:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self.host is not None:
            return chromadb.HttpClient(
                host=self.host, port=self.port, ssl=self.ssl, settings=settings
            )
        path = self.path or default_path()
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=settings)

    def get_collection(self) -> Collection:
        """Open (or create) the chromadb collection; blocking, safe from any thread.

        Raises:
            ConfigError: The collection was built with a different embedder.
            RetrieverError: chromadb could not be reached or opened.
        """
        with self._lock:
            if self._collection is None:
                self._collection = self._open()
            return self._collection

    def _open(self) -> Collection:
        ef = as_embedding_function(self.embedder)
        try:
            if self._client is None:
                self._client = self._make_client()
            self._check_existing(self._client, ef)
            collection = self._client.get_or_create_collection(
                self.collection_name,
                embedding_function=ef,  # type: ignore[arg-type]
            )
        except RhizomeError:
            raise
        except ValueError as exc:
            raise ConfigError(f"cannot open collection {self.collection_name!r}: {exc}") from exc
        except Exception as exc:
            raise RetrieverError(
                f"cannot open chroma collection {self.collection_name!r} at {self._where()}: {exc}"
            ) from exc
        index = (collection.configuration_json or {}).get("hnsw") or {}
        self._space = str(index.get("space") or "l2")
        return collection

    def _check_existing(self, client: ClientAPI, ef: EmbeddingFunction[Documents]) -> None:
        """Refuse a collection whose saved embedding function is not ``ef``."""
        from chromadb.errors import NotFoundError

        try:
            # Only the saved configuration is read; the collection object is discarded.
            existing = client.get_collection(self.collection_name)
        except (NotFoundError, ValueError):
            return
        saved = (existing.configuration_json or {}).get("embedding_function") or {}
        same = saved.get("name") == ef.name()
        if same and ef.name() == ExternalEmbedding.name():
            same = saved.get("config") == ef.get_config()
        if not same:
            raise self._mismatch(ef, saved)

    def _where(self) -> str:
        if self.host is not None:
            return f"http{'s' if self.ssl else ''}://{self.host}:{self.port}"
        return str(self.path or (default_path() if self._client is None else "the given client"))

    def _mismatch(self, ef: EmbeddingFunction[Documents], saved: Mapping[str, Any]) -> ConfigError:
        built = saved.get("name") or f"an unnamed ({saved.get('type', 'legacy')}) one"
        if saved.get("config"):
            built = f"{built} {saved['config']}"
        ours = ef.name() if ef.name() != ExternalEmbedding.name() else f"{ef.get_config()}"
        return ConfigError(
            f"collection {self.collection_name!r} at {self._where()} was built with embedding "
            f"function {built}, but this retriever embeds with {ours}; its vectors would not "
            "match. Open it with the embedder it was built with (rhizome-minilm: "
            "MiniLMEmbedder(), rhizome-hash: HashEmbedder(dimension=...)), or index into a new "
            "collection name."
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` with this retriever's embedder (blocking)."""
        return self.embedder.embed(list(texts))

    def _search(self, query: str, k: int, where: dict[str, Any] | None) -> list[Passage]:
        collection = self.get_collection()
        vector = self.embed([query])[0]
        try:
            result = collection.query(
                query_embeddings=[vector],  # type: ignore[arg-type]
                n_results=k,
                where=where or None,
                include=_INCLUDE,
            )
        except RhizomeError:
            raise
        except Exception as exc:
            raise RetrieverError(
                f"chroma query on {self.collection_name!r} failed (where={where!r}): {exc}"
            ) from exc
        return self._passages(result)

    def _passages(self, result: Mapping[str, Any]) -> list[Passage]:
        ids = result["ids"][0]
        docs = (result.get("documents") or [[]])[0] or [""] * len(ids)
        metas = (result.get("metadatas") or [[]])[0] or [{}] * len(ids)
        dists = (result.get("distances") or [[]])[0] or [0.0] * len(ids)
        return [
            Passage(str(i), d or "", self._score(float(dist)), dict(m or {}))
            for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def _score(self, distance: float) -> float:
        # cosine and ip distances are 1 - similarity; for l2 the nearest is the least negative
        return 1.0 - distance if self._space in ("cosine", "ip") else -distance

    def close(self) -> None:
        """Release the chromadb client if this retriever created it (blocking).

        A later search opens it again.
        """
        with self._lock:
            client = self._client if self._owns_client else None
            self._collection = None
            if client is not None:
                self._client = None
        if client is not None and hasattr(client, "close"):
            client.close()
            _close_http_session(client)

    # --- async side -----------------------------------------------------------------------

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        """Return up to ``k`` passages for ``query``, best first.

        Args:
            query: The text to search for.
            k: How many passages to return at most.
            where: A chromadb metadata filter, e.g. ``{"title": "Paris"}``.
        """
        check_k(k)
        return await anyio.to_thread.run_sync(self._search, query, k, where, limiter=self.limiter)

    async def aclose(self) -> None:
        """Release the chromadb client if this retriever created it."""
        await anyio.to_thread.run_sync(self.close, limiter=self.limiter)

    async def __aenter__(self) -> ChromaRetriever:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def count(self) -> int:
        """How many passages the collection holds."""
        return await anyio.to_thread.run_sync(
            lambda: self.get_collection().count(), limiter=self.limiter
        )

    async def get(self, ids: Iterable[str]) -> list[Passage]:
        """Fetch stored passages by id (unknown ids are left out), score 0."""
        wanted = list(ids)

        def fetch() -> list[Passage]:
            result = self.get_collection().get(ids=wanted, include=["documents", "metadatas"])
            docs = result.get("documents") or []
            metas = result.get("metadatas") or []
            return [
                Passage(str(i), d or "", 0.0, dict(m or {}))
                for i, d, m in zip(result["ids"], docs, metas, strict=True)
            ]

        return await anyio.to_thread.run_sync(fetch, limiter=self.limiter) if wanted else []


# chromadb rebuilds embedding functions saved with a collection by name.
register_embedding_function(ExternalEmbedding)  # type: ignore[no-untyped-call]
