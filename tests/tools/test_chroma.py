"""ChromaRetriever against a real on-disk chromadb and the real offline MiniLM model."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import chromadb
import httpx
import pytest
from chromadb.config import Settings

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval.chroma import ChromaRetriever, ExternalEmbedding
from rhizome.tools.retrieval.embeddings import HashEmbedder, MiniLMEmbedder
from rhizome.tools.retrieval.indexing import index_documents
from rhizome.tools.retrieval.retrievers import Passage

FACTS = {
    "Mars": ("space", "Mars is called the red planet because iron oxide colours its surface."),
    "Jupiter": ("space", "Jupiter is the largest planet in the solar system, a gas giant."),
    "Moon": ("space", "The Moon orbits the Earth and causes the ocean tides."),
    "Sun": ("space", "The Sun is a star that fuses hydrogen into helium in its core."),
    "Saturn": ("space", "Saturn is famous for its bright rings made of ice and rock."),
    "Comet": ("space", "A comet grows a glowing tail when it passes close to the Sun."),
    "Elephant": ("animals", "Elephants are the largest land animals and have long trunks."),
    "Penguin": ("animals", "Penguins are flightless birds that swim in cold southern seas."),
    "Cheetah": ("animals", "The cheetah is the fastest land animal, sprinting over 100 km/h."),
    "Octopus": ("animals", "An octopus has eight arms and three hearts."),
    "Owl": ("animals", "Owls hunt at night and can turn their heads very far."),
    "Bee": ("animals", "Honey bees make honey and pollinate flowers."),
    "Paris": ("places", "Paris is the capital of France and home of the Eiffel Tower."),
    "Tokyo": ("places", "Tokyo is the capital of Japan and its largest city."),
    "Nile": ("places", "The Nile is a long river flowing north through Egypt."),
    "Everest": ("places", "Mount Everest is the highest mountain above sea level."),
    "Sahara": ("places", "The Sahara is a vast hot desert in North Africa."),
    "Amazon": ("places", "The Amazon rainforest covers much of Brazil."),
    "Bread": ("food", "Bread is baked from flour, water and yeast."),
    "Cheese": ("food", "Cheese is made by curdling milk and ageing the curds."),
    "Coffee": ("food", "Coffee is brewed from roasted coffee beans and contains caffeine."),
    "Sushi": ("food", "Sushi combines vinegared rice with raw fish or vegetables."),
    "Chocolate": ("food", "Chocolate is made from the fermented seeds of the cacao tree."),
    "Tea": ("food", "Tea is an infusion of the dried leaves of the tea plant."),
    "Piano": ("music", "The piano is a keyboard instrument whose hammers strike strings."),
    "Violin": ("music", "The violin is a small string instrument played with a bow."),
    "Drum": ("music", "A drum makes sound when a stretched membrane is struck."),
    "Guitar": ("music", "A guitar usually has six strings that are plucked or strummed."),
    "Opera": ("music", "Opera is drama set to music and sung by performers."),
    "Jazz": ("music", "Jazz began in New Orleans and is known for improvisation."),
}

DOCS = [
    {"id": title.lower(), "title": title, "text": text, "topic": topic}
    for title, (topic, text) in FACTS.items()
]


@pytest.fixture(autouse=True)
def _chroma_default_embedder_is_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """chromadb's default embedder downloads a model; any call to it fails the test."""
    from chromadb.api.types import DefaultEmbeddingFunction
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    def forbidden(self: object, input: object) -> object:
        raise AssertionError("chromadb's default embedding function was called")

    monkeypatch.setattr(DefaultEmbeddingFunction, "__call__", forbidden)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", forbidden)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder()
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chroma")


@pytest.fixture(scope="module")
def facts(db_path: Path, minilm: MiniLMEmbedder) -> ChromaRetriever:
    retriever = ChromaRetriever("facts", path=db_path, embedder=minilm)
    stats = index_documents(retriever, DOCS, progress=False)
    assert (stats.documents, stats.chunks, stats.added) == (30, 30, 30)
    return retriever


def ids(passages: list[Passage]) -> list[str]:
    return [p.metadata["doc_id"] for p in passages]


async def test_relevant_passage_comes_first(facts: ChromaRetriever) -> None:
    found = await facts.search("Which planet looks red?", 3)
    assert len(found) == 3
    assert ids(found)[0] == "mars"
    assert found[0].text.startswith("Mars | Mars is called the red planet")
    assert found[0].metadata == {"doc_id": "mars", "chunk": 0, "title": "Mars", "topic": "space"}
    assert found[0].score > found[1].score >= found[2].score
    assert 0 < found[0].score <= 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("fastest animal on land", "cheetah"),
        ("what is the capital city of Japan", "tokyo"),
        ("drink with caffeine made from beans", "coffee"),
        ("instrument played with a bow", "violin"),
    ],
)
async def test_queries_find_their_documents(
    facts: ChromaRetriever, query: str, expected: str
) -> None:
    assert ids(await facts.search(query, 1)) == [expected]


async def test_reindexing_adds_nothing(facts: ChromaRetriever) -> None:
    before = await facts.count()
    stats = index_documents(facts, DOCS, progress=False)
    assert (stats.added, stats.unchanged, stats.removed) == (0, 30, 0)
    assert await facts.count() == before == 30


async def test_metadata_filter_restricts_results(facts: ChromaRetriever) -> None:
    found = await facts.search("largest", 10, where={"topic": "animals"})
    assert found
    assert all(p.metadata["topic"] == "animals" for p in found)
    assert ids(found)[0] == "elephant"
    both = await facts.search("capital", 5, where={"$or": [{"title": "Paris"}, {"title": "Bee"}]})
    assert sorted(ids(both)) == ["bee", "paris"]


async def test_k_larger_than_the_collection_returns_everything(facts: ChromaRetriever) -> None:
    found = await facts.search("anything", 500)
    assert len(found) == 30
    assert len({p.id for p in found}) == 30


async def test_many_concurrent_searches(facts: ChromaRetriever) -> None:
    queries = {"red planet": "mars", "flightless bird": "penguin", "desert": "sahara"}
    results: list[tuple[str, list[Passage]]] = []

    async def one(query: str) -> None:
        results.append((query, await facts.search(query, 2)))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            for query in queries:
                tg.start_soon(one, query)
    assert len(results) == 60
    assert all(ids(found)[0] == queries[q] for q, found in results)


async def test_a_new_client_on_the_same_path_finds_the_data(
    facts: ChromaRetriever, db_path: Path, minilm: MiniLMEmbedder
) -> None:
    again = ChromaRetriever("facts", path=db_path, embedder=minilm)
    assert ids(await again.search("ocean tides", 1)) == ["moon"]


def test_saved_configuration_names_our_embedder_and_holds_no_paths(
    facts: ChromaRetriever, db_path: Path
) -> None:
    config = facts.get_collection().configuration_json
    assert config["embedding_function"] == {
        "type": "known",
        "name": "rhizome-minilm",
        "config": {"max_length": 256, "batch_size": 32, "threads": 1},
    }
    assert config["hnsw"]["space"] == "cosine"
    with sqlite3.connect(db_path / "chroma.sqlite3") as con:
        rows = con.execute("select config_json_str, schema_str from collections").fetchall()
    stored = json.dumps(rows)
    assert "rhizome-minilm" in stored
    for fragment in (str(db_path), "site-packages", "model.onnx", "tokenizer"):
        assert fragment not in stored


def test_reopening_in_a_fresh_process_works_offline(facts: ChromaRetriever, db_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import chromadb
        from chromadb.config import Settings
        from chromadb.api.types import DefaultEmbeddingFunction

        def forbidden(self, input):
            raise SystemExit("chromadb's default embedding function was called")

        DefaultEmbeddingFunction.__call__ = forbidden
        import rhizome.tools.retrieval.embeddings  # registers rhizome-minilm with chromadb
        import anyio
        from rhizome.tools.retrieval.chroma import ChromaRetriever

        path = sys.argv[1]
        client = chromadb.PersistentClient(path, settings=Settings(anonymized_telemetry=False))
        collection = client.get_collection("facts")  # no embedding function given
        hit = collection.query(query_texts=["honey"], n_results=1)
        print(hit["metadatas"][0][0]["doc_id"])
        found = anyio.run(ChromaRetriever("facts", path=path).search, "big gas giant", 1)
        print(found[0].metadata["doc_id"])
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(db_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bee", "jupiter"]


async def test_collection_built_with_another_embedder_is_refused(
    tmp_path: Path, minilm: MiniLMEmbedder
) -> None:
    hashed = ChromaRetriever("hashed", path=tmp_path, embedder=HashEmbedder(dimension=16))
    index_documents(hashed, ["some text"], progress=False)
    with pytest.raises(
        ConfigError, match=r"'hashed'.*function rhizome-hash .*embeds with rhizome-minilm"
    ):
        await ChromaRetriever("hashed", path=tmp_path, embedder=minilm).search("x", 1)


async def test_collection_made_with_chromas_default_embedder_is_refused(
    tmp_path: Path, minilm: MiniLMEmbedder
) -> None:
    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    client.create_collection("plain")
    retriever = ChromaRetriever("plain", client=client, embedder=minilm)
    with pytest.raises(ConfigError, match=r"function default.*embeds with rhizome-minilm"):
        await retriever.search("x", 1)


class WordCountEmbedder:
    """A custom embedder that is not a chromadb embedding function."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t.split())), 1.0] for t in texts]


async def test_custom_embedders_are_recorded_by_class(tmp_path: Path) -> None:
    retriever = ChromaRetriever("custom", path=tmp_path, embedder=WordCountEmbedder())
    stats = index_documents(retriever, ["one two", "one two three four"], progress=False)
    assert stats.added == 2
    saved = retriever.get_collection().configuration_json["embedding_function"]
    assert saved["name"] == ExternalEmbedding.name()
    assert saved["config"]["embedder"].endswith("WordCountEmbedder")
    assert len(await retriever.search("a b", 2)) == 2
    with pytest.raises(ConfigError, match="WordCountEmbedder"):
        await ChromaRetriever("custom", path=tmp_path, embedder=HashEmbedder()).search("x", 1)


def test_only_one_location_may_be_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path and host"):
        ChromaRetriever("c", path=tmp_path, host="localhost")


async def test_invalid_k_is_rejected(facts: ChromaRetriever) -> None:
    with pytest.raises(ConfigError, match="k must be"):
        await facts.search("x", 0)


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real chroma server (the `chroma run` binary) on a free port of 127.0.0.1."""
    binary = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("the chroma server binary is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [binary, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the chroma server did not start")
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
async def test_chroma_server_over_http(
    chroma_server: tuple[str, int], minilm: MiniLMEmbedder
) -> None:
    host, port = chroma_server
    async with ChromaRetriever("remote", host=host, port=port, embedder=minilm) as remote:
        stats = await anyio.to_thread.run_sync(
            lambda: index_documents(remote, DOCS, progress=False)
        )
        assert stats.added == 30
        assert ids(await remote.search("Which planet looks red?", 1)) == ["mars"]
        saved = remote.get_collection().configuration_json["embedding_function"]
        assert saved["name"] == "rhizome-minilm"
    async with ChromaRetriever("remote", host=host, port=port, embedder=minilm) as again:
        assert await again.count() == 30


async def test_default_location_follows_rhizome_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHIZOME_DATA_DIR", str(tmp_path))
    retriever = ChromaRetriever("defaulted", embedder=HashEmbedder(dimension=8))
    index_documents(retriever, ["stored where the variable says"], progress=False)
    assert (tmp_path / "chroma" / "chroma.sqlite3").is_file()
    assert await retriever.count() == 1
    await retriever.aclose()
