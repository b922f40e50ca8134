"""MultiChainComparison: m sampled attempts, then one comparing call."""

from __future__ import annotations

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.compare import MultiChainComparison, format_attempt


def scripted(request: LMRequest, sample: int) -> str:
    system = str(request.messages[0]["content"])
    if "<rationale>" in system:
        return "<rationale>attempts 1 and 3 agree; 2 added wrong</rationale><answer>42</answer>"
    return [
        "<reasoning>6*7</reasoning><answer>42</answer>",
        "<reasoning>6+7</reasoning><answer>13</answer>",
        "<reasoning>7*6</reasoning><answer>42</answer>",
    ][sample % 3]


async def test_attempts_are_sampled_then_compared() -> None:
    lm = FakeLM(scripted)
    node = MultiChainComparison("question -> answer: int", m=3)
    assert list(node.inputs) == ["question"]
    assert list(node.outputs) == ["rationale", "answer"]
    g = Graph("g").add("mcc", node)
    p = await g.run(question="6 times 7?", lm=lm)
    assert p == {"rationale": "attempts 1 and 3 agree; 2 added wrong", "answer": 42}
    assert lm.calls == 2
    assert lm.requests[0].n == 3
    assert lm.requests[0].temperature == 0.7
    compare_prompt = str(lm.requests[1].messages[-1]["content"])
    assert "<attempts>" in compare_prompt
    for text in ("Attempt 1:", "reasoning: 6+7", "answer: 13", "Attempt 3:"):
        assert text in compare_prompt
    assert p.trace is not None
    assert len(p.trace.lm_calls("mcc.attempt")) == 1
    assert p.trace.lm_calls("mcc.compare")[0].outputs["answer"] == 42
    assert dict(g.named_predictors()) == {"mcc.attempt": node.attempt, "mcc.compare": node.compare}


def test_predictor_signatures_and_instruction() -> None:
    node = MultiChainComparison("context, question -> answer", m=2)
    assert node.attempt.signature.spec() == "context, question -> reasoning, answer"
    assert node.compare.signature.spec() == (
        "context, question, attempts: list[str] -> rationale, answer"
    )
    assert "Compare their reasoning" in node.compare.instruction
    twin = node.copy()
    twin.compare.instruction = "changed"
    assert node.compare.instruction != "changed"


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="m >= 1"):
        MultiChainComparison("q -> a", m=0)
    with pytest.raises(ConfigError, match="already has rationale"):
        MultiChainComparison("q -> rationale, a")


def test_format_attempt_writes_structures_as_json() -> None:
    text = format_attempt(2, {"reasoning": "r", "answer": ["a", "b"]})
    assert text == 'Attempt 2:\nreasoning: r\nanswer: ["a", "b"]'
