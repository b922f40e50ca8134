"""LLM-as-judge: a metric that is itself a one-node graph."""

from __future__ import annotations

import re

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example, Prediction
from rhizome.optimizers.judge import LLMJudge, llm_judge


def field(request: LMRequest, name: str) -> str:
    found = re.findall(rf"<{name}>\n(.*?)\n</{name}>", str(request.messages[-1]["content"]), re.S)
    return found[0] if found else ""


def strict_grader(request: LMRequest, sample: int) -> str:
    """Says true when the predicted answer names the gold answer (case-insensitive)."""
    gold, guess = field(request, "gold_answer"), field(request, "predicted_answer")
    verdict = "true" if gold.lower() in guess.lower() else "false"
    rationale = f"compared {guess!r} to {gold!r}"
    return f"<rationale>\n{rationale}\n</rationale>\n<verdict>\n{verdict}\n</verdict>"


EXAMPLE = Example(question="Who wrote Hamlet?", answer="Shakespeare").with_inputs("question")


async def test_judges_with_its_own_graph_and_the_criteria() -> None:
    lm = FakeLM(strict_grader)
    judge = llm_judge("the answer names the right author", lm=lm)
    assert await judge(EXAMPLE, Prediction(answer="William Shakespeare")) == 1.0
    assert await judge(EXAMPLE, Prediction(answer="Marlowe")) == 0.0
    system = str(lm.requests[0].messages[0]["content"])
    assert "Criteria: the answer names the right author" in system
    assert field(lm.requests[0], "question") == "Who wrote Hamlet?"
    assert [p for p, _ in judge.graph.named_predictors()] == ["judge"]


async def test_threshold_turns_the_score_into_a_verdict_and_samples_average() -> None:
    def wavering(request: LMRequest, sample: int) -> str:
        verdict = "false" if sample == 2 else "true"
        return f"<rationale>\nsample {sample}\n</rationale>\n<verdict>\n{verdict}\n</verdict>"

    lm = FakeLM(wavering)
    fraction = llm_judge("correct", lm=lm, samples=3)
    assert await fraction(EXAMPLE, Prediction(answer="x")) == pytest.approx(2 / 3)
    strict = llm_judge("correct", lm=lm, samples=3, threshold=0.9)
    lenient = llm_judge("correct", lm=lm, samples=3, threshold=0.5)
    assert await strict(EXAMPLE, Prediction(answer="x")) is False
    assert await lenient(EXAMPLE, Prediction(answer="x")) is True
    verdicts = await fraction.verdicts(EXAMPLE, Prediction(answer="x"))
    assert [r for _, r in verdicts] == ["sample 0", "sample 1", "sample 2"]


async def test_field_names_are_configurable_and_checked() -> None:
    lm = FakeLM(strict_grader)
    judge = LLMJudge(
        "right label", lm=lm, question_field=None, gold_field="label", answer_field="y"
    )
    example = Example(text="good movie", label="positive").with_inputs("text")
    assert await judge(example, Prediction(y="Positive")) == 1.0
    assert field(lm.requests[-1], "question") == "text: good movie"
    with pytest.raises(KeyError, match="no field 'y'"):
        await judge(example, Prediction(answer="positive"))


def test_rejects_empty_criteria_and_bad_samples() -> None:
    with pytest.raises(ConfigError, match="criteria"):
        llm_judge("  ")
    with pytest.raises(ConfigError, match="samples"):
        llm_judge("ok", samples=0)
