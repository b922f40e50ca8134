"""Built-in metrics that score what users mean and say why: numbers, aliases, feedback."""

from __future__ import annotations

import re

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.example import Example, Prediction
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import NodeRecord, Trace
from rhizome.nodes.predict import Predict
from rhizome.nodes.retrieve import Retrieve
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.metrics import (
    Score,
    all_of,
    answer_in_passages,
    distinct_from_question,
    exact_match,
    normalize_text,
    numeric_match,
    passes,
    retrieval_recall,
    token_f1,
)
from rhizome.tools.retrieval.indexing import index_documents
from rhizome.tools.retrieval.retrievers import InMemoryRetriever, Passage

RIVERS = [
    {"id": "nile", "title": "Nile", "text": "The Nile flows north through Egypt to the sea."},
    {"id": "danube", "title": "Danube", "text": "The Danube river flows through Vienna."},
    {"id": "thames", "title": "Thames", "text": "The Thames river flows through London."},
    {"id": "chess", "title": "Chess", "text": "Chess is played on a board of 64 squares."},
]


def test_thousands_separators_do_not_split_numbers() -> None:
    assert normalize_text("2,525") == "2525"
    assert normalize_text("It cost $1,234,567.") == "it cost 1234567"
    assert normalize_text("3.5 miles") == "3.5 miles"
    assert normalize_text("red, green") == "red green"
    assert normalize_text("1,2") == "1 2"  # not a thousands separator
    assert exact_match()(Example(answer="2525"), Prediction(answer="2,525"))


def test_exact_match_accepts_a_list_label_and_an_aliases_field() -> None:
    listed = exact_match()
    ex = Example(question="q", answer=["Castmere", "Castmere town"])
    assert passes(listed(ex, Prediction(answer="castmere town")))
    aliased = exact_match(aliases="aliases")
    ex = Example(question="q", answer="Robert Smith", aliases=["Bob Smith", "R. Smith"])
    assert passes(aliased(ex, Prediction(answer="Bob Smith")))
    assert not passes(exact_match()(ex, Prediction(answer="Bob Smith")))
    # An example without the aliases field accepts its answer alone.
    assert passes(aliased(Example(answer="Lowfen"), Prediction(answer="lowfen")))
    with pytest.raises(KeyError, match="no label field 'gold'; its fields are: answer"):
        exact_match(label="gold")(Example(answer="x"), Prediction(answer="x"))


def test_exact_match_feedback_says_what_was_expected_and_what_came_back() -> None:
    metric = exact_match(aliases="aliases")
    wrong = metric(Example(answer="Castmere", aliases=["Castmere Town"]), Prediction(answer="Lo"))
    assert isinstance(wrong, Score)
    assert wrong.value == 0.0
    assert wrong.feedback == "Wrong answer: expected one of 'Castmere', 'Castmere Town', got 'Lo'."
    right = metric(Example(answer="Castmere"), Prediction(answer="the Castmere"))
    assert right.value == 1.0
    assert "Correct" in right.feedback
    # A Score still reads like the number it replaces.
    assert float(right) == 1.0
    assert not wrong
    assert right


def test_token_f1_takes_the_best_alias_and_names_missing_and_extra_words() -> None:
    metric = token_f1(aliases="aliases")
    ex = Example(answer="Orla Vennet", aliases=["Lady Orla Vennet of Castmere"])
    score = metric(ex, Prediction(answer="Vennet of Lowfen"))
    assert isinstance(score, Score)
    # Against "Lady Orla Vennet of Castmere": 2 of 3 words right, 2 of 5 found.
    assert score.value == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert "expected 'Lady Orla Vennet of Castmere'" in score.feedback
    assert "Missing words: castmere, lady, orla." in score.feedback
    assert "Extra words: lowfen." in score.feedback
    assert passes(metric(ex, Prediction(answer="orla vennet")))


def writer(request: LMRequest, sample: int) -> str:
    """Hop 1 asks about Egypt; hop 2 asks about board games (it misses the Danube)."""
    system = str(request.messages[0]["content"])
    if "second" in system:
        return "<query>\nboard game squares\n</query>"
    return "<query>\nriver Egypt\n</query>"


def two_hops(store: InMemoryRetriever) -> Graph:
    g = Graph("hops", outputs=["answer"])
    g.add("write1", Predict("question -> query", instruction="Write the first query."))
    g.add("search1", Retrieve(store, k=1))
    g.add("write2", Predict("question -> query", instruction="Write the second query."))
    g.add("search2", Retrieve(store, k=1, exclude="context"))
    g.add("answer", Predict("question, a: list[str], b: list[str] -> answer"))
    g.connect("write1", "search1").connect("write2", "search2")
    g.connect("search1.passages", "search2.context")  # search1 feeds search2 but wrote no query
    g.connect("search1.passages", "answer.a").connect("search2.passages", "answer.b")
    return g


def answerer(request: LMRequest, sample: int) -> str:
    if "<answer>" in str(request.messages[0]["content"]):
        return "<answer>\nVienna\n</answer>"
    return writer(request, sample)


async def test_recall_names_the_missed_document_and_the_node_that_missed_it() -> None:
    store = InMemoryRetriever()
    index_documents(store, RIVERS, progress=False)
    ex = Example(question="Which rivers?", supporting=["Nile", "Danube"], answer="Vienna")
    ex = ex.with_inputs("question")
    prediction = await two_hops(store).run(ex.inputs(), lm=FakeLM(answerer))
    metric = retrieval_recall("supporting")
    score = metric(ex, prediction, prediction.trace)
    assert score.value == 0.5
    assert "Missed supporting 'Danube' (1 of 2)" in score.feedback
    assert "blamed on 'search2'" in score.feedback
    assert "'search2' searched 'board game squares' and found 'Chess'" in score.feedback
    # The node that found nothing useful, and the LM node that wrote its query, are told.
    assert set(score.node_feedback) == {"search2", "write2"}
    assert "'Danube' not retrieved" in score.node_feedback["search2"]
    assert "led 'search2' to find 'Chess'" in score.node_feedback["write2"]
    by_id = retrieval_recall("ids", by="id")
    assert by_id(Example(ids=["nile"]), prediction, prediction.trace).value == 1.0
    by_text = retrieval_recall("facts", by="text")
    assert by_text(Example(facts="flows through Vienna"), prediction, prediction.trace).value == 0
    # Evaluate reads the Score's value; the pass threshold is unchanged.
    result = await Evaluate(two_hops(store), [ex], metric, lm=FakeLM(answerer), progress=False)
    assert result.score == 0.5


async def test_when_every_hop_found_something_the_miss_goes_to_all_of_them() -> None:
    store = InMemoryRetriever()
    index_documents(store, RIVERS, progress=False)
    prediction = await two_hops(store).run({"question": "q"}, lm=FakeLM(answerer))
    ex = Example(supporting=["Nile", "Chess", "Thames"])
    score = retrieval_recall()(ex, prediction, prediction.trace)
    assert score.value == pytest.approx(2 / 3)
    assert set(score.node_feedback) == {"search1", "search2", "write1", "write2"}
    assert retrieval_recall()(Example(supporting=["Nile", "Chess"]), prediction, prediction.trace)


def test_recall_reads_typed_passages_from_the_prediction() -> None:
    passages = [Passage("d1", "Some text", 1.0, {"title": "Nile"}), {"id": "d2", "text": "x"}]
    metric = retrieval_recall("gold", by="id", passages_field="docs")
    score = metric(Example(gold=["d2", "d3"]), Prediction(docs=passages))
    assert score.value == 0.5
    assert "'d3'" in score.feedback
    assert score.node_feedback == {}
    with pytest.raises(ValueError, match="use one of title, id, text"):
        retrieval_recall(by="url")
    empty = retrieval_recall()(Example(supporting=["Nile"]), Prediction(answer="a"), Trace())
    assert empty.feedback == "Missed supporting 'Nile' (1 of 1); no retrieval node ran."
    with pytest.raises(KeyError, match="no trace"):
        retrieval_recall()(Example(supporting=["x"]), Prediction(answer="a"))


async def test_answer_in_passages_says_where_it_looked() -> None:
    store = InMemoryRetriever()
    index_documents(store, RIVERS, progress=False)
    prediction = await two_hops(store).run({"question": "q"}, lm=FakeLM(answerer))
    metric = answer_in_passages(aliases="aliases")
    miss = metric(Example(answer="London", aliases=["Londinium"]), prediction, prediction.trace)
    assert miss.value == 0.0
    assert "The answer one of 'London', 'Londinium' is in none" in miss.feedback
    assert "'search1' searched 'river Egypt' and found 'Nile'" in miss.feedback
    assert set(miss.node_feedback) == {"search1", "search2", "write1", "write2"}
    hit = metric(Example(answer="Egypt"), prediction, prediction.trace)
    assert hit.value == 1.0
    assert hit.node_feedback == {}
    flat = metric(Example(answer="cat"), Prediction(passages=["a cat sat"]), None)
    assert flat.value == 1.0
    assert re.search(r"'cat' is in the retrieved passages", flat.feedback)


def test_numeric_match_and_all_of_carry_feedback_to_the_node_at_fault() -> None:
    wrong = numeric_match()(Example(answer="2,525"), Prediction(answer="about 2,500 miles"))
    assert wrong.feedback == "Wrong answer: expected 2525, got 2500 (from 'about 2,500 miles')."
    assert numeric_match()(Example(answer="72"), Prediction(answer="$72.00"))
    none = numeric_match()(Example(answer="72"), Prediction(answer="seventy"))
    assert none.feedback == "Expected the number 72; answer 'seventy' holds none."
    trace = Trace()
    trace.records.append(NodeRecord(node="hop1", kind="Predict", outputs={"query": "Who is X?"}))
    metric = all_of(exact_match(), distinct_from_question("hop1"))
    score = metric(Example(question="who is x", answer="A"), Prediction(answer="B"), trace)
    assert score.value == 0.0
    assert "Wrong answer: expected 'A', got 'B'." in score.feedback
    assert score.node_feedback == {
        "hop1": "The query repeated the question ('Who is X?') instead of narrowing it."
    }
    trace.records[0].outputs["query"] = "X biography"
    passed = metric(Example(question="who is x", answer="A"), Prediction(answer="A"), trace)
    assert passed.value == 1.0
    assert passed.node_feedback == {}
