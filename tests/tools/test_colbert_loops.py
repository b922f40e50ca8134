"""ColBERTv2 used from several event loops: sync calls, threads, and closing.

The server keeps connections alive (HTTP/1.1), as real search servers do: a
pooled connection left from a loop that has ended is exactly what broke the
second sync call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.retrieve import Retrieve
from rhizome.tools.retrieval.colbert import ColBERTv2
from tests.tools.test_retrievers import TEXTS, FakeColBERT


@pytest.fixture
def colbert() -> Iterator[FakeColBERT]:
    server = FakeColBERT(keep_alive=True)
    yield server
    server.close()


async def top_text(rm: ColBERTv2, query: str) -> str:
    return (await rm.search(query, 1))[0].text


def test_two_sync_calls_each_on_its_own_loop(colbert: FakeColBERT) -> None:
    rm = ColBERTv2(colbert.url)
    assert asyncio.run(top_text(rm, "highest mountain in japan")) == TEXTS[1]
    assert asyncio.run(top_text(rm, "great wall of china")) == TEXTS[2]
    assert colbert.queries == ["highest mountain in japan", "great wall of china"]
    assert colbert.connections == 2  # one per loop ...
    assert colbert.all_closed()  # ... closed when that asyncio.run ended


def test_a_graph_called_synchronously_twice(colbert: FakeColBERT) -> None:
    retrieve = Retrieve(ColBERTv2(colbert.url), k=1)
    graph = Graph("search", outputs=["passages"]).add("retrieve", retrieve)
    assert graph(query="highest mountain in japan").passages == [TEXTS[1]]
    assert graph(query="Olympic games in Paris").passages == [TEXTS[3]]
    assert len(colbert.queries) == 2


def test_two_loops_at_once_on_two_threads(colbert: FakeColBERT) -> None:
    rm = ColBERTv2(colbert.url, max_concurrency=2)
    both_running = threading.Barrier(2)

    async def searches() -> list[str]:
        await asyncio.to_thread(both_running.wait, 10)
        async with asyncio.timeout(10):
            return await asyncio.gather(*(top_text(rm, "great wall of china") for _ in range(10)))

    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(asyncio.run, searches()) for _ in range(2)]
        results = [job.result(timeout=30) for job in jobs]
    assert results == [[TEXTS[2]] * 10] * 2
    assert len(colbert.queries) == 20
    assert colbert.connections >= 2  # each loop its own connections ...
    assert colbert.all_closed()  # ... closed when that loop ended
    assert rm.limiter.in_flight == 0


async def test_aclose_closes_this_loops_client_and_a_search_reopens(
    colbert: FakeColBERT,
) -> None:
    rm = ColBERTv2(colbert.url)
    assert await top_text(rm, "kyoto capital") == TEXTS[4]
    await rm.aclose()
    assert await asyncio.to_thread(colbert.all_closed)
    assert await top_text(rm, "kyoto capital") == TEXTS[4]
    assert colbert.connections == 2
    await rm.aclose()


async def test_a_client_passed_in_is_used_and_left_open(colbert: FakeColBERT) -> None:
    async with httpx.AsyncClient() as client:
        async with ColBERTv2(colbert.url, client=client) as rm:
            assert await top_text(rm, "eiffel tower paris") == TEXTS[0]
        assert not client.is_closed
        assert colbert.open == 1


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        ColBERTv2("http://127.0.0.1:9/none", max_concurrency=0)
