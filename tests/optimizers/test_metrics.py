from __future__ import annotations

import pytest

from rhizome.engine.example import Example, Prediction
from rhizome.engine.trace import NodeRecord, Trace
from rhizome.optimizers.evaluate import confidence_interval
from rhizome.optimizers.metrics import (
    all_of,
    answer_in_passages,
    distinct_from_question,
    exact_match,
    normalize_text,
    numeric_match,
    parse_number,
    passes,
    score_value,
    token_f1,
)


def test_normalize_strips_articles_punctuation_accents() -> None:
    assert normalize_text("  The Café, of Zürich! ") == "cafe of zurich"


def test_exact_match_accepts_any_listed_answer() -> None:
    metric = exact_match()
    ex = Example(question="q", answer=["Castmere", "Castmere town"])
    assert metric(ex, Prediction(answer="the castmere."))
    assert not metric(ex, Prediction(answer="Brindle"))


def test_exact_match_names_missing_field() -> None:
    with pytest.raises(KeyError, match="its fields are: text"):
        exact_match()(Example(answer="x"), Prediction(text="x"))


def test_token_f1_partial_credit() -> None:
    score = token_f1()(Example(answer="Orla Vennet"), Prediction(answer="Vennet"))
    assert float(score) == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_numeric_match_reads_last_number() -> None:
    assert parse_number("So the total is 1,234.") == 1234.0
    metric = numeric_match()
    assert metric(Example(answer="72"), Prediction(answer="She earns $72.00 in total"))
    assert not metric(Example(answer="72"), Prediction(answer="seventy"))


def test_answer_in_passages_reads_trace_records() -> None:
    trace = Trace()
    trace.records.append(
        NodeRecord(node="retrieve", kind="Retrieve", outputs={"passages": ["Born in Castmere."]})
    )
    metric = answer_in_passages()
    assert metric(Example(answer="Castmere"), Prediction(answer="?"), trace)
    assert not metric(Example(answer="Lowfen"), Prediction(answer="?"), trace)


def test_trace_metric_rejects_query_repeating_question() -> None:
    trace = Trace()
    trace.records.append(NodeRecord(node="hop1", kind="Predict", outputs={"query": "Who, is X?"}))
    metric = all_of(exact_match(), distinct_from_question("hop1"))
    ex = Example(question="who is x", answer="A")
    assert not metric(ex, Prediction(answer="A"), trace)
    trace.records[0].outputs["query"] = "X biography"
    assert metric(ex, Prediction(answer="A"), trace)


def test_passing_is_an_explicit_threshold() -> None:
    assert passes(True)
    assert passes(0.8, 0.5)
    assert not passes(0.4, 0.5)
    with pytest.raises(TypeError, match="must return a bool, a number"):
        passes("yes")
    with pytest.raises(TypeError):
        score_value(float("nan"))


def test_confidence_interval_contains_mean_and_narrows() -> None:
    small = confidence_interval([1.0, 0.0] * 5)
    large = confidence_interval([1.0, 0.0] * 500)
    assert small[0] < 0.5 < small[1]
    assert (large[1] - large[0]) < (small[1] - small[0])
    lo, hi = confidence_interval([0.2, 0.4, 0.6])
    assert lo < 0.4 < hi


def test_score_carries_feedback_and_counts_as_its_value() -> None:
    from rhizome.optimizers.metrics import Score, passes, score_value

    score = Score(True, feedback="expected 'Castmere'", node_feedback={"hop1": "repeated"})
    assert score_value(score) == 1.0
    assert passes(score)
    assert not passes(Score(0.4), threshold=0.5)
    assert score.node_feedback == {"hop1": "repeated"}
    with pytest.raises(TypeError, match=r"Score\.value"):
        Score("high")  # type: ignore[arg-type]
