"""InMemoryRetriever, metadata filters, and the ColBERTv2 client against a local server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import pytest

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval.colbert import ColBERTv2
from rhizome.tools.retrieval.embeddings import HashEmbedder
from rhizome.tools.retrieval.retrievers import InMemoryRetriever, Passage, Retriever, matches

TEXTS = [
    "The Eiffel Tower is in Paris, France.",
    "Mount Fuji is the highest mountain in Japan.",
    "The Great Wall of China is thousands of kilometres long.",
    "Paris hosted the Olympic Games in 1900, 1924 and 2024.",
    "Kyoto was the capital of Japan for over a thousand years.",
]


# --- in-memory retriever ------------------------------------------------------------------


async def test_bm25_ranks_by_matching_words() -> None:
    store = InMemoryRetriever(TEXTS)
    assert isinstance(store, Retriever)
    found = await store.search("Olympic games in Paris", 2)
    assert [p.text for p in found] == [TEXTS[3], TEXTS[0]]
    assert found[0].score > found[1].score > 0
    assert await store.search("zebra", 3) == []


async def test_embedding_mode_ranks_by_cosine() -> None:
    store = InMemoryRetriever(TEXTS, embedder=HashEmbedder(dimension=256))
    found = await store.search("highest mountain in Japan", 1)
    assert found[0].text == TEXTS[1]
    assert -1.0 <= found[0].score <= 1.0


async def test_ids_metadata_and_filters() -> None:
    store = InMemoryRetriever(
        [
            {"id": "a", "text": "red apples", "metadata": {"kind": "fruit", "year": 2001}},
            {"id": "b", "text": "red cars", "metadata": {"kind": "vehicle", "year": 1999}},
            {"id": "c", "text": "red cherries", "metadata": {"kind": "fruit", "year": 1990}},
        ]
    )
    found = await store.search("red", 5, where={"kind": "fruit"})
    assert sorted(p.id for p in found) == ["a", "c"]
    found = await store.search(
        "red", 5, where={"$and": [{"kind": "fruit"}, {"year": {"$gt": 2000}}]}
    )
    assert [p.id for p in found] == ["a"]
    assert found[0] == Passage("a", "red apples", found[0].score, {"kind": "fruit", "year": 2001})


async def test_adding_the_same_text_twice_keeps_one_copy() -> None:
    store = InMemoryRetriever(["same text", "same text", "other"])
    assert await store.count() == 2
    store.delete(store.add(["other"]))
    assert len(store) == 1


def test_documents_without_text_are_rejected() -> None:
    with pytest.raises(ConfigError, match="'text'"):
        InMemoryRetriever([{"body": "x"}])


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"a": 1}, True),
        ({"a": 2}, False),
        ({"a": {"$ne": 2}}, True),
        ({"a": {"$gte": 1, "$lt": 2}}, True),
        ({"a": {"$gt": 1}}, False),
        ({"b": {"$in": ["x", "y"]}}, True),
        ({"b": {"$nin": ["x", "y"]}}, False),
        ({"$or": [{"a": 5}, {"b": "x"}]}, True),
        ({"$and": [{"a": 1}, {"b": "z"}]}, False),
        ({"missing": {"$gt": 0}}, False),
        ({"b": {"$gt": 3}}, False),  # str vs int compares as no match, not an error
        (None, True),
    ],
)
def test_metadata_filter_language(where: dict[str, Any] | None, expected: bool) -> None:
    assert matches({"a": 1, "b": "x"}, where) is expected


def test_unknown_filter_operators_are_named() -> None:
    with pytest.raises(ConfigError, match=r"\$like.*valid operators: \$eq"):
        matches({"a": 1}, {"a": {"$like": 1}})
    with pytest.raises(ConfigError, match=r"\$not"):
        matches({"a": 1}, {"$not": [{"a": 1}]})


async def test_invalid_k_is_rejected() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k must be"):
            await InMemoryRetriever(TEXTS).search("x", bad)  # type: ignore[arg-type]


# --- ColBERTv2 ------------------------------------------------------------------------------


class FakeColBERT:
    """A ColBERTv2 search server on 127.0.0.1 that ranks TEXTS by shared words.

    With ``keep_alive`` it speaks HTTP/1.1 and keeps each connection open, as real
    search servers do, and counts connections opened (``connections``) and open now
    (``open``).
    """

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.open = 0
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                with lock:
                    fake.connections += 1
                    fake.open += 1

            def finish(self) -> None:
                super().finish()
                with lock:
                    fake.open -= 1

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                fake.requests.append({"method": "GET", "path": urlparse(self.path).path, **query})
                self._answer(query)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"method": "POST", **body})
                self._answer(body)

            def _answer(self, params: dict[str, Any]) -> None:
                query, k = str(params["query"]), int(params["k"])
                if query == "boom":
                    return self._send(500, b"index exploded")
                if query == "garbage":
                    return self._send(200, b"<html>not json</html>")
                if query == "shapeless":
                    return self._send(200, b'{"results": []}')
                self._send(200, json.dumps({"topk": fake.rank(query, k)}).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wiki17_abstracts"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @staticmethod
    def rank(query: str, k: int) -> list[dict[str, Any]]:
        words = set(query.lower().split())
        scored = sorted(
            ((len(words & set(t.lower().rstrip(".").split())), pid) for pid, t in enumerate(TEXTS)),
            reverse=True,
        )
        total = sum(s for s, _ in scored) or 1
        return [
            {"text": TEXTS[pid], "pid": pid, "rank": r + 1, "score": float(s), "prob": s / total}
            for r, (s, pid) in enumerate(scored[:k])
        ]

    @property
    def queries(self) -> list[str]:
        """The query of every request, in order."""
        return [str(r["query"]) for r in self.requests]

    def all_closed(self) -> bool:
        """Wait up to 5 s for the clients to close every connection."""
        deadline = time.monotonic() + 5
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.open == 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def colbert_server() -> Iterator[FakeColBERT]:
    server = FakeColBERT()
    yield server
    server.close()


async def test_colbert_get_returns_ranked_passages(colbert_server: FakeColBERT) -> None:
    async with ColBERTv2(colbert_server.url) as rm:
        assert isinstance(rm, Retriever)
        found = await rm.search("highest mountain in japan", 2)
    assert [p.text for p in found] == [TEXTS[1], TEXTS[4]]
    assert found[0].id == "1"
    assert found[0].score == 4.0
    assert found[0].metadata["rank"] == 1
    assert 0 < found[0].metadata["prob"] <= 1
    assert colbert_server.requests == [
        {
            "method": "GET",
            "path": "/wiki17_abstracts",
            "query": "highest mountain in japan",
            "k": "2",
        }
    ]


async def test_colbert_post_mode(colbert_server: FakeColBERT) -> None:
    async with ColBERTv2(colbert_server.url, post=True) as rm:
        found = await rm.search("paris olympic games", 1)
    assert [p.id for p in found] == ["3"]
    assert colbert_server.requests[0] == {"method": "POST", "query": "paris olympic games", "k": 1}


async def test_colbert_concurrent_searches(colbert_server: FakeColBERT) -> None:
    results: dict[int, list[Passage]] = {}
    async with ColBERTv2(colbert_server.url, max_concurrency=4) as rm:

        async def one(i: int) -> None:
            results[i] = await rm.search("great wall of china", 1)

        async with anyio.create_task_group() as tg:
            for i in range(25):
                tg.start_soon(one, i)
    assert len(colbert_server.requests) == 25
    assert all(r[0].text == TEXTS[2] for r in results.values())


@pytest.mark.parametrize(
    ("query", "message"),
    [("boom", "answered 500: index exploded"), ("garbage", "non-JSON"), ("shapeless", "'topk'")],
)
async def test_colbert_server_failures_are_retriever_errors(
    colbert_server: FakeColBERT, query: str, message: str
) -> None:
    from rhizome.tools.retrieval.retrievers import RetrieverError

    async with ColBERTv2(colbert_server.url) as rm:
        with pytest.raises(RetrieverError, match=message):
            await rm.search(query, 3)


async def test_colbert_unreachable_and_bad_arguments() -> None:
    from rhizome.tools.retrieval.retrievers import RetrieverError

    with pytest.raises(ConfigError, match="http://"):
        ColBERTv2("127.0.0.1:2017")
    async with ColBERTv2("http://127.0.0.1:9/none", timeout=2) as rm:
        with pytest.raises(RetrieverError, match="unreachable"):
            await rm.search("x", 1)
        with pytest.raises(ConfigError, match="metadata filters"):
            await rm.search("x", 1, where={"a": 1})
