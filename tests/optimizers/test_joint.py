"""JointSearch: finds a planted combination, keeps to budgets, repeats, resumes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.call.signature import Field
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node
from rhizome.engine.slots import Slot, count_problem
from rhizome.nodes.predict import Predict
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.records import read_jsonl
from rhizome.optimizers.trials import Budget

INSTRUCTIONS = {
    "rewrite": ["KEY1 rewrite it.", "Rewrite noisily.", "Rewrite plainly."],
    "answer": ["Answer noisily.", "KEY2 answer it.", "Answer plainly."],
}


def tag(text: str, name: str) -> str:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    assert found is not None, f"no <{name}> in {text!r}"
    return found.group(1)


def outputs_of(request: LMRequest) -> str:
    return str(request.messages[0]["content"]).split("Outputs:")[1]


def planted(request: LMRequest, sample: int) -> str:
    """Right only with KEY1 in the rewriter, KEY2 in the answerer and demos for the answerer.

    Two of the three right give half credit (even-numbered questions), so the
    search has a gradient to follow.
    """
    system = str(request.messages[0]["content"])
    user = str(request.messages[-1]["content"])
    if "- query" in outputs_of(request):
        mark = "!" if "KEY1" in system else "?"
        return f"<query>\n{tag(user, 'question')}{mark}\n</query>"
    query = tag(user, "query")
    n = int(query[1:-1])
    good = query.endswith("!") + ("KEY2" in system) + (len(request.messages) > 2)
    right = good == 3 or (good == 2 and n % 2 == 0)
    return f"<answer>\n{f'a{n}' if right else 'wrong'}\n</answer>"


def two_step() -> Graph:
    g = Graph("two")
    g.add("rewrite", Predict("question -> query"))
    g.add("answer", Predict("query -> answer"))
    return g.connect("rewrite", "answer")


DATA = [
    Example(question=f"q{i}", query=f"q{i}!", answer=f"a{i}").with_inputs("question")
    for i in range(10)
]


def search(lm: FakeLM, **overrides: Any) -> JointSearch:
    options: dict[str, Any] = {
        "num_trials": 32,
        "instructions": INSTRUCTIONS,
        "num_demo_sets": 2,
        "max_labeled_demos": 2,
        "max_bootstrapped_demos": 2,
        "minibatch_size": 5,
        "full_eval_every": 8,
        "parallel": 4,
        "lm": lm,
        "seed": 0,
    }
    options.update(overrides)
    return JointSearch(exact_match(), **options)


def summary(s: JointSearch) -> list[tuple[int, str, dict[str, int], float]]:
    return [(t.tid, t.kind, t.config, t.score) for t in s.history]


async def test_finds_the_planted_combination_and_leaves_the_input_alone() -> None:
    graph = two_step()
    before = {p: (pr.instruction, list(pr.demos)) for p, pr in graph.named_predictors()}
    s = search(FakeLM(planted))
    best = await s.optimize(graph, DATA)
    tuned = dict(best.named_predictors())
    assert "KEY1" in tuned["rewrite"].instruction
    assert "KEY2" in tuned["answer"].instruction
    assert tuned["answer"].demos, "the answerer needs demos in the planted combination"
    assert s.best_score == 1.0
    assert {p: (pr.instruction, list(pr.demos)) for p, pr in graph.named_predictors()} == before
    assert best is not graph
    # Trial 0 is the program as given; it scores nothing here.
    assert s.space is not None
    assert s.history[0].config == s.space.default()
    assert s.history[0].score == 0.0
    prediction = await best.run(question="q7", lm=FakeLM(planted))
    assert prediction["answer"] == "a7"


async def test_same_seed_same_trials_other_seed_other_trials() -> None:
    first = search(FakeLM(planted), num_trials=12)
    second = search(FakeLM(planted), num_trials=12)
    other = search(FakeLM(planted), num_trials=12, seed=5)
    await first.optimize(two_step(), DATA)
    await second.optimize(two_step(), DATA)
    await other.optimize(two_step(), DATA)
    assert summary(first) == summary(second)
    assert first.best_config == second.best_config
    assert [t.config for t in first.history[1:12]] != [t.config for t in other.history[1:12]]


async def test_budget_never_starts_a_trial_it_cannot_pay_for() -> None:
    lm = FakeLM(planted)
    # No demo candidates: every LM call below is a trial call (5 examples x 2 nodes = 10).
    s = search(lm, num_demo_sets=0, max_labeled_demos=0, parallel=2, budget=Budget(calls=45))
    await s.optimize(two_step(), DATA)
    trials = [t for t in s.history if t.kind == "trial"]
    assert s.stopped == "budget"
    # Rounds of 2 trials: 20, 40 calls; a fifth trial (10 more) would pass 45.
    assert len(trials) == 4
    assert lm.calls == 40 <= 45
    assert lm.calls == sum(t.usage["calls"] for t in s.history) == s.spent["calls"]


async def test_budget_in_tokens_is_respected() -> None:
    lm = FakeLM(planted)
    s = search(lm, num_demo_sets=0, max_labeled_demos=0, parallel=1, budget=Budget(tokens=500))
    await s.optimize(two_step(), DATA)
    used = sum(t.usage["prompt_tokens"] + t.usage["completion_tokens"] for t in s.history)
    one_trial = max(t.usage["prompt_tokens"] + t.usage["completion_tokens"] for t in s.history)
    assert s.stopped == "budget"
    assert 500 <= used <= 500 + one_trial


async def test_resume_after_budget_stop_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path,
) -> None:
    whole_lm = FakeLM(planted)
    whole = search(whole_lm, num_trials=16, run_dir=tmp_path / "whole")
    whole_best = await whole.optimize(two_step(), DATA)

    first_lm = FakeLM(planted)
    first = search(first_lm, num_trials=16, run_dir=tmp_path / "cut", budget=Budget(calls=100))
    await first.optimize(two_step(), DATA)
    done_first = [t.tid for t in first.history if t.kind == "trial"]
    assert first.stopped == "budget"
    assert 0 < len(done_first) < 16

    rest_lm = FakeLM(planted)
    rest = search(rest_lm, num_trials=16, run_dir=tmp_path / "cut")
    best = await rest.optimize(two_step(), DATA)

    assert rest.stopped == "done"
    assert summary(rest) == summary(whole)
    assert rest.best_config == whole.best_config
    # Nothing was done twice: no candidates rebuilt, no finished trial re-run.
    assert first_lm.calls + rest_lm.calls == whole_lm.calls
    rows = read_jsonl(tmp_path / "cut" / "trials.jsonl")
    tids = [r["tid"] for r in rows if r["kind"] == "trial"]
    assert sorted(tids) == list(range(16))

    assert best.named_parameters() == whole_best.named_parameters()


async def test_resume_after_cancellation_continues_instead_of_restarting(tmp_path: Path) -> None:
    whole = search(FakeLM(planted), num_trials=16, run_dir=tmp_path / "whole")
    await whole.optimize(two_step(), DATA)

    calls = 0
    scope = anyio.CancelScope()

    def cancelling(request: LMRequest, sample: int) -> str:
        nonlocal calls
        calls += 1
        if calls == 130:
            scope.cancel()
        return planted(request, sample)

    with scope:
        await search(FakeLM(cancelling), num_trials=16, run_dir=tmp_path / "cut").optimize(
            two_step(), DATA
        )
    assert scope.cancelled_caught
    finished = {r["tid"] for r in read_jsonl(tmp_path / "cut" / "trials.jsonl")}
    assert 0 < len(finished - {-1}) < 16

    rest_lm = FakeLM(planted)
    rest = search(rest_lm, num_trials=16, run_dir=tmp_path / "cut")
    await rest.optimize(two_step(), DATA)
    assert summary(rest) == summary(whole)
    assert rest.best_config == whole.best_config
    rows = read_jsonl(tmp_path / "cut" / "trials.jsonl")
    tids = [r["tid"] for r in rows if r["kind"] == "trial"]
    assert sorted(tids) == list(range(16)), "each trial must run exactly once"


async def test_minibatches_with_periodic_full_evaluation() -> None:
    s = search(FakeLM(planted), num_trials=8, parallel=2, full_eval_every=4)
    await s.optimize(two_step(), DATA)
    trials = [t for t in s.history if t.kind == "trial"]
    fulls = [t for t in s.history if t.kind == "full"]
    assert [t.n for t in trials] == [5] * 8
    assert [(f.n, f.at) for f in fulls] == [(10, 4), (10, 8)]
    assert s.best_score == max(f.score for f in fulls)


async def test_rejects_a_run_dir_with_other_settings(tmp_path: Path) -> None:
    await search(FakeLM(planted), num_trials=4, run_dir=tmp_path).optimize(two_step(), DATA)
    with pytest.raises(ConfigError, match="different settings"):
        await search(FakeLM(planted), num_trials=4, seed=9, run_dir=tmp_path).optimize(
            two_step(), DATA
        )


async def test_run_dir_holds_space_trials_and_a_loadable_program(tmp_path: Path) -> None:
    s = search(FakeLM(planted), num_trials=8, run_dir=tmp_path)
    best = await s.optimize(two_step(), DATA)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["config"]["seed"] == 0
    assert meta["summary"]["best_score"] == s.best_score
    assert meta["summary"]["trials"] == 8
    assert (tmp_path / "space.json").exists()
    rows = read_jsonl(tmp_path / "trials.jsonl")
    assert rows[0]["kind"] == "setup", "the set-up's spend is recorded first"
    assert len(rows) - 1 == len(s.history)
    loaded = two_step().load(tmp_path / "program.json")
    got = {p: pr.instruction for p, pr in loaded.named_predictors()}
    assert got == {p: pr.instruction for p, pr in best.named_predictors()}


class Passages(Node):
    """A stand-in retriever: ``k`` passages per question, ``k`` declared as a slot."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def parameter_slots(self) -> dict[str, Slot]:
        return {"k": Slot(self, "k", count_problem)}

    @property
    def inputs(self) -> dict[str, Field]:
        return {"question": Field("question")}

    @property
    def outputs(self) -> dict[str, Field]:
        return {"passages": Field("passages", list[str], is_input=False)}

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        return {"passages": [f"{inputs['question']} passage {i}" for i in range(self.k)]}


def rag() -> Graph:
    g = Graph("rag").add("retrieve", Passages(k=1))
    g.add("answer", Predict("question, passages: list[str] -> reasoning, answer"))
    return g.connect("retrieve", "answer")


async def test_searches_lm_k_and_temperature_and_reports_a_pareto_front() -> None:
    def weak(request: LMRequest, sample: int) -> str:
        return "<reasoning>\nno\n</reasoning>\n<answer>\nwrong\n</answer>"

    def strong(request: LMRequest, sample: int) -> str:
        user = str(request.messages[-1]["content"])
        n = tag(user, "question")[1:]
        enough = len(re.findall(r"passage \d", user)) >= 3
        words = " ".join(["thinking"] * 30)
        answer = f"a{n}" if enough else "no"
        return f"<reasoning>\n{words}\n</reasoning>\n<answer>\n{answer}\n</answer>"

    cheap, smart = FakeLM(weak, name="cheap"), FakeLM(strong, name="smart")
    s = JointSearch(
        exact_match(),
        num_trials=24,
        num_demo_sets=0,
        max_labeled_demos=0,
        temperatures=[0.0, 0.7],
        ks=[3],
        lms=[cheap, smart],
        minibatch_size=4,
        full_eval_every=8,
        lm=cheap,
        seed=1,
    )
    best = await s.optimize(rag(), DATA)
    assert s.space is not None
    chosen = s.space.describe(s.best_config)
    assert chosen["answer.lm"] == "smart"
    assert chosen["retrieve.k"] == "k=3"
    assert best.nodes["retrieve"].k == 3  # type: ignore[attr-defined]
    assert s.best_score == 1.0
    assert {r.temperature for r in smart.requests} >= {0.0, 0.7} or {
        r.temperature for r in cheap.requests
    } >= {0.0, 0.7}
    costs = [p.cost for p in s.pareto]
    assert costs == sorted(costs)
    assert s.pareto[-1].score == 1.0
    assert s.pareto[0].score < 1.0
    assert s.pareto[0].cost < s.pareto[-1].cost


async def test_proposed_instructions_enter_the_space() -> None:
    def prompt_model(request: LMRequest, sample: int) -> str:
        user = str(request.messages[-1]["content"])
        if "<examples>" in user and "<program>" not in user:
            return "<summary>\nQuestions and short answers.\n</summary>"
        step = re.search(r"Step '(\w+)'", user)
        assert step is not None
        key = "KEY1" if step.group(1) == "rewrite" else "KEY2"
        return f"<proposed_instruction>\n{key} version {sample}.\n</proposed_instruction>"

    s = search(
        FakeLM(planted), instructions=None, prompt_lm=FakeLM(prompt_model), num_instructions=2
    )
    await s.optimize(two_step(), DATA)
    assert s.space is not None
    dims = {d.name: d.options for d in s.space.dims}
    assert dims["rewrite.instruction"][1:] == ("KEY1 version 0.", "KEY1 version 1.")
    assert dims["answer.instruction"][1:] == ("KEY2 version 0.", "KEY2 version 1.")
    assert s.best_score == 1.0
