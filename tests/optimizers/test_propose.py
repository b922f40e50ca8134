"""Instruction proposal and COPRO hill climbing, with a scripted prompt model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.describe import describe_data, describe_node, locate
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.propose import COPRO, format_attempts, propose_instructions
from rhizome.optimizers.records import read_jsonl

DATA = [
    Example(question=f"q{i}", query=f"q{i}!", answer=f"a{i}").with_inputs("question")
    for i in range(6)
]


def section(request: LMRequest, name: str) -> str | None:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", str(request.messages[-1]["content"]), re.S)
    return found.group(1) if found else None


def two_step() -> Graph:
    g = Graph("two")
    g.add("rewrite", Predict("question -> query"))
    g.add("answer", Predict("query -> answer"))
    return g.connect("rewrite", "answer")


def prompt_model(request: LMRequest, sample: int) -> str:
    if section(request, "examples") is not None and section(request, "program") is None:
        return "<summary>\nShort questions with one-word answers.\n</summary>"
    step = section(request, "step") or ""
    name = re.findall(r"Step '([\w.]+)'", step)[0]
    tip = section(request, "tip") or "no tip"
    return f"<proposed_instruction>\nFor {name}: {tip}\n</proposed_instruction>"


async def test_proposals_are_grounded_in_structure_data_and_demos() -> None:
    lm = FakeLM(prompt_model)
    demos = {"answer": [{"query": "q1!", "answer": "a1"}]}
    found = await propose_instructions(two_step(), DATA, prompt_lm=lm, n=3, demos=demos, seed=0)
    assert set(found) == {"rewrite", "answer"}
    for path, texts in found.items():
        assert texts[0] == dict(two_step().named_predictors())[path].instruction
        assert len(texts) == 4
        assert len(set(texts)) == 4
        assert all(t.startswith(f"For {path}:") for t in texts[1:])
    answer_asks = [r for r in lm.requests if "Step 'answer'" in (section(r, "step") or "")]
    assert len(answer_asks) == 3
    ask = answer_asks[0]
    assert "comes from output 'query' of 'rewrite'" in (section(ask, "step") or "")
    assert "6 examples" in (section(ask, "data_summary") or "")
    assert "one-word answers" in (section(ask, "data_summary") or "")
    assert "q1!" in (section(ask, "examples") or "")
    assert "edge rewrite.query -> answer.query" in (section(ask, "program") or "")
    rewrite_ask = next(r for r in lm.requests if "Step 'rewrite'" in (section(r, "step") or ""))
    assert "goes to input 'query' of 'answer'" in (section(rewrite_ask, "step") or "")
    # Without demos for the rewriter, its labelled examples are shown.
    assert "question: q" in (section(rewrite_ask, "examples") or "")


async def test_failed_proposals_are_left_out_and_summaries_can_be_skipped() -> None:
    def flaky(request: LMRequest, sample: int) -> str:
        if "concise" in (section(request, "tip") or "").lower():
            return "no tags at all"
        return prompt_model(request, sample)

    lm = FakeLM(flaky)
    found = await propose_instructions(
        Graph("one").add("answer", Predict("question -> answer")),
        DATA,
        prompt_lm=lm,
        n=7,
        summarize=False,
        include_original=False,
    )
    assert len(found["answer"]) == 6
    assert not any("concise" in t.lower() for t in found["answer"])
    assert not any("Describe this dataset" in str(r.messages[0]["content"]) for r in lm.requests)


def student(request: LMRequest, sample: int) -> str:
    system = str(request.messages[0]["content"])
    question = section(request, "question") or ""
    answer = f"a{question[1:]}" if "GOOD" in system else "wrong"
    return f"<answer>\n{answer}\n</answer>"


def climber(request: LMRequest, sample: int) -> str:
    """Proposes plain instructions first; with scored attempts shown, a GOOD one."""
    attempts = section(request, "attempts")
    if attempts is None:
        return prompt_model(request, sample)
    assert "Score: 0.000" in attempts
    return f"<proposed_instruction>\nGOOD instruction v{sample}\n</proposed_instruction>"


async def test_copro_climbs_from_scored_attempts(tmp_path: Path) -> None:
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    before = dict(graph.named_predictors())["answer"].instruction
    prompt_lm = FakeLM(climber)
    copro = COPRO(
        exact_match(),
        prompt_lm=prompt_lm,
        breadth=3,
        depth=2,
        lm=FakeLM(student),
        run_dir=tmp_path,
    )
    best = await copro.optimize(graph, DATA)
    assert copro.best_score == 1.0
    assert dict(best.named_predictors())["answer"].instruction.startswith("GOOD instruction")
    assert dict(graph.named_predictors())["answer"].instruction == before
    rounds = [(row["round"], row["score"]) for row in copro.history]
    assert all(score == 0.0 for r, score in rounds if r == 0)
    assert any(score == 1.0 for r, score in rounds if r == 1)
    assert any(section(r, "attempts") for r in prompt_lm.requests)
    assert len(read_jsonl(tmp_path / "trials.jsonl")) >= 3
    assert (tmp_path / "program.json").exists()


def test_copro_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="breadth"):
        COPRO(exact_match(), prompt_lm=FakeLM(["x"]), breadth=0)


def test_attempts_are_listed_worst_first_and_best_last() -> None:
    text = format_attempts([("best", 0.9), ("worst", 0.1), ("middle", 0.5)])
    assert text.index("worst") < text.index("middle") < text.index("best")
    assert "Score: 0.900" in text


def test_nested_nodes_are_located_and_described() -> None:
    inner = Graph("inner").add("answer", Predict("context, question -> answer"))
    outer = Graph("outer").add("fetch", Predict("question -> context")).add("sub", inner)
    outer.connect("fetch.context", "sub.context")
    container, name, _, role = locate(outer, "sub.answer")
    assert (container, name, role) == (inner, "answer", "")
    text = describe_node(outer, "sub.answer")
    assert "Step 'sub.answer'" in text
    assert "question (str); comes from the program input 'question'" in text
    with pytest.raises(ConfigError, match=r"predictors: fetch, sub\.answer"):
        locate(outer, "nowhere")


def test_data_statistics_describe_each_field() -> None:
    text = describe_data([*DATA, Example(question="q9", query="q9!", answer="a9", tags=("x",))])
    assert text.startswith("7 examples.")
    assert "- question: text, 1.0 words on average" in text
    assert "Tags: x (1)" in text


async def test_one_word_proposals_are_dropped() -> None:
    def terse(request: LMRequest, sample: int) -> str:
        if "concise" in (section(request, "tip") or "").lower():
            return "<proposed_instruction>\nquery\n</proposed_instruction>"
        return prompt_model(request, sample)

    found = await propose_instructions(
        Graph("one").add("answer", Predict("question -> answer")),
        DATA,
        prompt_lm=FakeLM(terse),
        n=7,
        summarize=False,
        include_original=False,
    )
    assert "query" not in found["answer"]
    assert len(found["answer"]) == 6
