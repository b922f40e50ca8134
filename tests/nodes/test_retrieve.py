"""The Retrieve node: k passages out, de-duplication across hops, graphs, traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import NodeRecord, node_record
from rhizome.nodes.retrieve import Retrieve
from rhizome.optimizers.metrics import retrieval_recall
from rhizome.tools.retrieval.chroma import ChromaRetriever
from rhizome.tools.retrieval.embeddings import MiniLMEmbedder
from rhizome.tools.retrieval.indexing import index_documents
from rhizome.tools.retrieval.retrievers import InMemoryRetriever, Passage

RIVERS = [
    {"id": "nile", "title": "Nile", "text": "The Nile flows north through Egypt to the sea."},
    {"id": "amazon", "title": "Amazon", "text": "The Amazon river carries the most water."},
    {"id": "danube", "title": "Danube", "text": "The Danube river flows through Vienna."},
    {"id": "thames", "title": "Thames", "text": "The Thames river flows through London."},
    {"id": "rhine", "title": "Rhine", "text": "The Rhine river flows past Cologne."},
    {"id": "volga", "title": "Volga", "text": "The Volga is the longest river in Europe."},
    {"id": "baker", "title": "Baking", "text": "Bread dough rises when yeast ferments."},
    {"id": "chess", "title": "Chess", "text": "Chess is played on a board of 64 squares."},
]


class Recording:
    """Wraps a retriever and records the k of every search."""

    def __init__(self, inner: InMemoryRetriever) -> None:
        self.inner = inner
        self.asked: list[tuple[str, int]] = []

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        self.asked.append((query, k))
        return await self.inner.search(query, k, where=where)


@pytest.fixture
def rivers() -> InMemoryRetriever:
    store = InMemoryRetriever()
    index_documents(store, RIVERS, progress=False)
    return store


async def test_returns_k_passage_texts(rivers: InMemoryRetriever) -> None:
    node = Retrieve(rivers, k=2)
    assert list(node.inputs) == ["query"]
    assert list(node.outputs) == ["passages"]
    out = await node.forward(query="river flows through London")
    assert out["passages"][0] == "Thames | The Thames river flows through London."
    assert len(out["passages"]) == 2


async def test_excluded_passages_are_skipped_and_replaced(rivers: InMemoryRetriever) -> None:
    recording = Recording(rivers)
    node = Retrieve(recording, k=2, exclude="context", ids_output="ids")
    first = await node.forward(query="river flows through", context=[])
    second = await node.forward(query="river flows through", context=first["passages"])
    assert len(second["passages"]) == 2
    assert not set(first["passages"]) & set(second["passages"])
    assert not set(first["ids"]) & set(second["ids"])
    assert recording.asked == [("river flows through", 2), ("river flows through", 4)]


async def test_exclusion_ignores_whitespace_differences(rivers: InMemoryRetriever) -> None:
    node = Retrieve(rivers, k=1, exclude="seen")
    seen = ["Rhine  |  The Rhine river\nflows past Cologne."]
    out = await node.forward(query="river past Cologne", seen=seen)
    assert len(out["passages"]) == 1
    assert "Rhine" not in out["passages"][0]


async def test_fewer_than_k_when_the_store_runs_out() -> None:
    node = Retrieve(InMemoryRetriever(["alpha one", "alpha two"]), k=3, exclude="context")
    out = await node.forward(query="alpha", context=["alpha one"])
    assert out["passages"] == ["alpha two"]


async def test_duplicate_texts_under_different_ids_appear_once() -> None:
    store = InMemoryRetriever(
        [{"id": "a", "text": "same words"}, {"id": "b", "text": "same words"}, "other words"]
    )
    assert (await Retrieve(store, k=2).forward(query="same words"))["passages"] == [
        "same words",
        "other words",
    ]
    kept = await Retrieve(store, k=2, dedupe=False).forward(query="same words")
    assert kept["passages"] == ["same words", "same words"]


async def test_several_queries_merge_by_best_score(rivers: InMemoryRetriever) -> None:
    node = Retrieve(rivers, k=3, queries="queries")
    assert node.inputs["queries"].annotation == list[str]
    queries = ["yeast bread", "chess board", "river Egypt", "yeast"]
    out = await node.forward(queries=queries)
    assert {p.split(" |")[0] for p in out["passages"]} == {"Baking", "Chess", "Nile"}
    assert len(out["passages"]) == len(set(out["passages"])) == 3
    alone = [(await rivers.search(q, 1))[0] for q in queries[:3]]
    by_score = sorted(alone, key=lambda p: -p.score)
    assert out["passages"] == [p.text for p in by_score]


async def test_where_filter_is_applied(rivers: InMemoryRetriever) -> None:
    node = Retrieve(rivers, k=5, where={"title": {"$in": ["Nile", "Volga"]}})
    out = await node.forward(query="the river Egypt")
    assert sorted(p.split(" |")[0] for p in out["passages"]) == ["Nile", "Volga"]


async def test_ids_and_scores_go_to_a_record_with_details(rivers: InMemoryRetriever) -> None:
    record = NodeRecord(node="search", kind="Retrieve")
    record.details = {}  # type: ignore[attr-defined]
    with node_record(record):
        await Retrieve(rivers, k=2).forward(query="river Vienna")
    retrieved = record.details["retrieved"]  # type: ignore[attr-defined]
    assert len(retrieved) == 2
    assert retrieved[0]["score"] >= retrieved[1]["score"]
    assert rivers.existing_ids([r["id"] for r in retrieved]) == {r["id"] for r in retrieved}


async def test_typed_output_gives_ids_titles_and_metadata(rivers: InMemoryRetriever) -> None:
    node = Retrieve(rivers, k=2, typed_output="found")
    assert list(node.outputs) == ["passages", "found"]
    assert node.outputs["found"].annotation == list[Passage]
    out = await node.forward(query="river flows through London")
    first = out["found"][0]
    assert isinstance(first, Passage)
    assert (first.title, first.metadata["doc_id"]) == ("Thames", "thames")
    assert [p.text for p in out["found"]] == out["passages"]
    with pytest.raises(ConfigError, match="must differ"):
        Retrieve(rivers, typed_output="passages")


async def test_the_in_memory_store_keeps_a_title_given_with_a_text() -> None:
    store = InMemoryRetriever([{"id": "n", "title": "Nile", "text": "It flows through Egypt."}])
    (found,) = await store.search("Egypt", 1)
    assert (found.id, found.title) == ("n", "Nile")
    assert Passage("x", "no title").title == ""


def test_k_is_a_tunable_attribute_and_copies_share_the_retriever(
    rivers: InMemoryRetriever,
) -> None:
    node = Retrieve(rivers, k=2)
    clone = node.copy()
    clone.k = 5
    assert (node.k, clone.k) == (2, 5)
    assert clone.retriever is node.retriever
    assert "k" in node.parameter_slots()


async def test_configuration_errors(rivers: InMemoryRetriever) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        Retrieve(rivers, query="x", output="x")
    with pytest.raises(ConfigError, match="async search"):
        Retrieve(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be"):
        Retrieve(rivers, k=0)
    node = Retrieve(rivers)
    node.k = -3
    with pytest.raises(ConfigError, match="k must be"):
        await node.forward(query="x")


async def test_unfed_exclude_input_is_optional_in_a_graph(rivers: InMemoryRetriever) -> None:
    g = Graph("one").add("search", Retrieve(rivers, k=1, exclude="context"))
    prediction = await g.run(query="Egypt")
    assert prediction["passages"] == ["Nile | The Nile flows north through Egypt to the sea."]


# --- two hops over a real chroma collection and the real model ---------------------------


@pytest.fixture(scope="module")
def chroma_rivers(tmp_path_factory: pytest.TempPathFactory) -> ChromaRetriever:
    path: Path = tmp_path_factory.mktemp("rivers")
    retriever = ChromaRetriever("rivers", path=path, embedder=MiniLMEmbedder())
    index_documents(retriever, RIVERS, progress=False)
    return retriever


async def test_two_hop_graph_never_repeats_a_passage(chroma_rivers: ChromaRetriever) -> None:
    g = Graph("hops", outputs=["hop2.passages"])
    g.add("hop1", Retrieve(chroma_rivers, k=2, ids_output="ids"))
    g.add("hop2", Retrieve(chroma_rivers, k=2, exclude="context", ids_output="ids"))
    g.connect("hop1.passages", "hop2.context")
    prediction = await g.run(query="a river flowing through a European city")
    hop1 = prediction.trace.node("hop1").outputs
    hop2 = prediction.trace.node("hop2").outputs
    assert len(hop1["passages"]) == len(hop2["passages"]) == 2
    assert not set(hop1["ids"]) & set(hop2["ids"])
    found = {p.split(" |")[0] for p in hop1["passages"] + hop2["passages"]}
    assert found <= {"Danube", "Thames", "Rhine", "Volga", "Nile", "Amazon"}
    assert "Chess" not in found
    assert "Baking" not in found


class Failing:
    """A retriever whose back-end is down for one query."""

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        if query == "bad":
            raise RuntimeError("index offline")
        return [Passage(query, f"about {query}", 1.0)]


async def test_a_failing_search_raises_its_own_error_not_a_group() -> None:
    node = Retrieve(Failing(), k=2, queries="queries")
    assert (await node.forward(queries=[]))["passages"] == []
    assert (await node.forward(queries=["a", "b"]))["passages"] == ["about a", "about b"]
    with pytest.raises(RuntimeError, match="index offline"):
        await node.forward(queries=["a", "bad", "c"])


async def test_typed_passages_from_chroma_reach_outputs_trace_and_metrics(
    chroma_rivers: ChromaRetriever,
) -> None:
    g = Graph("one").add("search", Retrieve(chroma_rivers, k=2, typed_output="found"))
    prediction = await g.run(query="the river that flows through London")
    found = prediction["found"]
    assert found[0].title == "Thames"
    assert found[0].metadata["doc_id"] == "thames"
    assert found[0].id != "thames"  # the id of the stored chunk; doc_id names the document
    record = prediction.trace.node("search")
    assert record.details["retrieved"][0] == {
        "id": found[0].id,
        "score": found[0].score,
        "title": "Thames",
        "doc_id": "thames",
    }
    saved = json.loads(prediction.trace.to_json())
    assert saved["records"][0]["outputs"]["found"][0]["metadata"]["title"] == "Thames"
    # Retrieval metrics name documents by title or id, read from the typed output.
    by_id = retrieval_recall("gold", by="id")(
        Example(gold=["thames", "volga"]), prediction, prediction.trace
    )
    assert by_id.value == 0.5
    assert "Missed supporting 'volga'" in by_id.feedback
    assert "found 'Thames'" in by_id.feedback
