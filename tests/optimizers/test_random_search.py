"""RandomSearch: the candidates it tries, its leaderboard, and the program it keeps."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import ChainOfThought
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.random_search import RandomSearch
from rhizome.optimizers.records import read_jsonl


def question_of(request: LMRequest) -> str:
    found = re.search(r"<question>\n(.*?)\n</question>", str(request.messages[-1]["content"]))
    assert found is not None
    return found.group(1)


def responder(request: LMRequest, sample: int) -> str:
    """The teacher (TEACHER in its instruction) is right; the student only with reasoned demos.

    Labelled demos carry no reasoning, bootstrapped ones do, so only bootstrapped
    candidates can score.
    """
    system = str(request.messages[0]["content"])
    demos = [m["content"] for m in request.messages[1:-1] if m["role"] == "assistant"]
    reasoned = any("<reasoning>" in str(d) for d in demos)
    right = "TEACHER" in system or reasoned
    n = question_of(request)[1:]
    answer = f"a{n}" if right else "wrong"
    return f"<reasoning>\nthink about {n}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def program() -> Graph:
    return Graph("qa").add("answer", ChainOfThought("question -> answer"))


def teacher() -> Graph:
    return Graph("qa").add("answer", ChainOfThought("question -> answer", instruction="TEACHER"))


TRAIN = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(8)]
VAL = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(20, 26)]


async def test_keeps_a_bootstrapped_candidate_and_ranks_every_candidate(tmp_path: Path) -> None:
    graph = program()
    lm = FakeLM(responder)
    rs = RandomSearch(
        exact_match(),
        num_candidates=3,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
        valset=VAL,
        teacher=teacher(),
        lm=lm,
        run_dir=tmp_path,
    )
    best = await rs.optimize(graph, TRAIN)
    descriptions = [c.description for c in rs.candidates]
    assert len(rs.candidates) == 3 + 3
    assert descriptions[:2] == ["zero-shot", "labelled, 0 demos"]
    assert all(d.startswith("bootstrap") for d in descriptions[2:])
    scores = dict((c.description, c.score) for c in rs.candidates)
    assert scores["zero-shot"] == 0.0
    assert rs.leaderboard[0][0] == 1.0
    assert rs.leaderboard[0][1].startswith("bootstrap")
    assert [s for s, _ in rs.leaderboard] == sorted((s for s, _ in rs.leaderboard), reverse=True)
    demos = dict(best.named_predictors())["answer"].demos
    assert demos
    assert all("reasoning" in d for d in demos)
    # Candidates were scored on the validation set, not the trainset.
    assert all(c.usage["calls"] == len(VAL) for c in rs.candidates)
    rows = read_jsonl(tmp_path / "trials.jsonl")
    assert [r["description"] for r in rows] == descriptions
    assert json.loads((tmp_path / "run.json").read_text())["summary"]["best_score"] == 1.0
    assert (tmp_path / "program.json").exists()


async def test_leaves_the_input_graph_alone_and_repeats_with_the_seed() -> None:
    graph = program()
    graph.set_parameters({"answer.demos": [{"question": "q0", "answer": "a0"}]})
    before = copy.deepcopy(graph.named_parameters())

    async def run(seed: int) -> list[tuple[float, str]]:
        rs = RandomSearch(
            exact_match(),
            num_candidates=2,
            max_labeled_demos=1,
            teacher=teacher(),
            lm=FakeLM(responder),
            seed=seed,
        )
        await rs.optimize(graph, TRAIN)
        return rs.leaderboard

    first = await run(3)
    assert first == await run(3)
    assert graph.named_parameters() == before


async def test_zero_shot_candidate_drops_demos_the_input_had() -> None:
    graph = program()
    graph.set_parameters({"answer.demos": [{"question": "q0", "reasoning": "r", "answer": "a0"}]})
    rs = RandomSearch(
        exact_match(),
        num_candidates=0,
        max_labeled_demos=0,
        teacher=teacher(),
        lm=FakeLM(responder),
    )
    await rs.optimize(graph, TRAIN)
    zero = rs.candidates[0]
    assert zero.description == "zero-shot"
    assert zero.demos == {"answer": 0}
    assert zero.score == 0.0


def test_rejects_a_negative_candidate_count() -> None:
    with pytest.raises(ConfigError, match="num_candidates"):
        RandomSearch(exact_match(), num_candidates=-1)
