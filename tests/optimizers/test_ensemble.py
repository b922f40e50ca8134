"""Ensemble: several programs on one input, combined by vote or by a function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.ensemble import Ensemble, majority
from rhizome.optimizers.metrics import normalize_text


def answering(*replies: str) -> Graph:
    """A program whose LM gives ``replies`` in turn (reasoning and answer tags)."""
    lm = FakeLM(list(replies))
    return Graph("qa").add("answer", Predict("question -> reasoning, answer", lm=lm))


def reply(answer: str, reasoning: str = "because") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


async def test_majority_vote_per_field() -> None:
    ens = Ensemble(
        [
            answering(reply("Paris", "r1")),
            answering(reply("Lyon", "r2")),
            answering(reply("Paris", "r2")),
        ]
    )
    prediction = await ens.run(question="Capital of France?")
    assert prediction["answer"] == "Paris"
    assert prediction["reasoning"] == "r2"  # each field votes on its own


async def test_vote_on_one_field_keeps_the_winner_consistent() -> None:
    ens = Ensemble(
        [
            answering(reply("Lyon", "wrong reasoning")),
            answering(reply("Paris", "good reasoning")),
            answering(reply("paris", "other reasoning")),
        ],
        vote_field="answer",
        normalize=normalize_text,
    )
    prediction = await ens.run(question="Capital of France?")
    assert prediction["answer"] == "Paris"
    assert prediction["reasoning"] == "good reasoning"


async def test_a_failing_program_is_left_out_of_the_vote() -> None:
    broken = answering("no tags", "still no tags")
    ens = Ensemble([broken, answering(reply("B")), answering(reply("B"))])
    prediction = await ens.run(question="?")
    assert prediction["answer"] == "B"
    trace = prediction.trace
    assert trace is not None
    failed = [r for r in trace.records if r.error is not None]
    assert [r.node for r in failed] == ["p0.answer"]


async def test_all_programs_failing_is_an_error() -> None:
    ens = Ensemble([answering("junk"), answering("junk")])
    results = await ens.batch([{"question": "?"}])
    assert results[0].error is not None
    assert "every program of the ensemble failed" in results[0].error["message"]


async def test_custom_reduce_function() -> None:
    def longest(outputs: list[dict[str, Any]]) -> dict[str, Any]:
        return max(outputs, key=lambda o: len(str(o["answer"])))

    ens = Ensemble([answering(reply("ab")), answering(reply("abcd"))], reduce=longest)
    assert (await ens.run(question="?"))["answer"] == "abcd"


async def test_predictors_are_named_per_member_and_copies_are_independent() -> None:
    def by_instruction(request: LMRequest, sample: int) -> str:
        return reply("tuned" if "TUNED" in str(request.messages[0]["content"]) else "plain")

    lm = FakeLM(by_instruction)
    members = [
        Graph("qa").add("answer", Predict("question -> reasoning, answer")) for _ in range(3)
    ]
    ens = Ensemble(members)
    assert [p for p, _ in ens.named_predictors()] == ["p0.answer", "p1.answer", "p2.answer"]
    tuned = ens.copy()
    for _, predictor in tuned.named_predictors():
        predictor.instruction = "TUNED"
    assert (await tuned.run(question="?", lm=lm))["answer"] == "tuned"
    assert (await ens.run(question="?", lm=lm))["answer"] == "plain"
    trace = (await ens.run(question="?", lm=lm)).trace
    assert trace is not None
    assert sorted(c.predictor for c in trace.lm_calls()) == ["p0.answer", "p1.answer", "p2.answer"]


def test_majority_breaks_ties_by_order() -> None:
    assert majority(["x", "y"]) == "x"
    assert majority(["y", "x", "x", "y"]) == "y"
    assert majority([{"a": 1}, {"a": 2}, {"a": 2}]) == {"a": 2}


def test_rejects_programs_without_shared_outputs_and_bad_reduce() -> None:
    a = Graph("a").add("n", Predict("question -> answer"))
    b = Graph("b").add("n", Predict("question -> label"))
    with pytest.raises(ConfigError, match="share no output"):
        Ensemble([a, b])
    with pytest.raises(ConfigError, match="reduce"):
        Ensemble([a], reduce="mean")
    with pytest.raises(ConfigError, match="at least one"):
        Ensemble([])


async def test_saves_and_loads_like_any_graph(tmp_path: Path) -> None:
    def make() -> Ensemble:
        return Ensemble(
            [Graph("qa").add("answer", Predict("question -> answer")) for _ in range(2)]
        )

    tuned = make()
    for i, (_, predictor) in enumerate(tuned.named_predictors()):
        predictor.instruction = f"member {i}"
    tuned.save(tmp_path / "ensemble.json")
    loaded = make().load(tmp_path / "ensemble.json")
    assert [p.instruction for _, p in loaded.named_predictors()] == ["member 0", "member 1"]
