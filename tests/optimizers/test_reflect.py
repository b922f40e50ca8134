"""Reflect against the test server: feedback per node in the prompt, Pareto pool, budgets, seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import Score, exact_match
from rhizome.optimizers.reflect import GEPA, Reflect
from rhizome.optimizers.reflection import echoed, pareto_front_of
from rhizome.optimizers.trials import Budget
from rhizome.runs import read_run, trial_points
from tests.optimizers import reflect_case as case
from tests.server import OpenAIServer


def reflections(server: OpenAIServer) -> list[str]:
    """The user message of every request that went to the reflection LM."""
    return [
        str(body["messages"][-1]["content"])
        for body in server.requests
        if "new_instruction" in json.dumps(body.get("response_format", {}))
    ]


def steps(search: Reflect) -> list[tuple[Any, ...]]:
    keys = ("kind", "iteration", "parent", "minibatch", "node", "proposal", "accepted")
    return [tuple(json.dumps(s.get(k), sort_keys=True) for k in keys) for s in search.steps]


async def test_feedback_reaches_the_reflection_prompt_for_the_node_it_is_aimed_at(
    server: OpenAIServer,
) -> None:
    server.responder = case.planted
    s = case.search(server.url)
    best = await s.optimize(case.graph(), case.DATA)
    assert s.best_score == 1.0
    params = best.named_parameters()
    assert "KEY1" in params["rewrite.instruction"]
    assert "KEY2" in params["answer.instruction"]
    first, second = reflections(server)[:2]
    # The rewriter's step: its own inputs and outputs from the trace, the feedback
    # for the whole prediction and the feedback aimed at it, not at the answerer.
    assert "<current_instruction>\nRewrite the question.\n</current_instruction>" in first
    assert re.search(r"Step input question: q\d", first)
    assert re.search(r"Step output query: q\d\?", first)
    assert "Feedback: expected 'a" in first
    assert "Feedback for this step: add KEY1" in first
    assert "add KEY2" not in first
    # The answerer's turn: blamed by the feedback, shown the marked queries it got.
    assert "<current_instruction>\nAnswer the query.\n</current_instruction>" in second
    assert re.search(r"Step input query: q\d!", second)
    assert "Feedback for this step: add KEY2" in second
    assert "add KEY1" not in second
    assert [st["node"] for st in s.steps[:2]] == ["rewrite", "answer"]


def test_a_proposal_that_echoes_the_prompt_is_not_an_instruction() -> None:
    inputs = {
        "program": "Program 'two': inputs question -> outputs answer\n- node rewrite: Predict",
        "examples": "### Example 1 (score 0.00)\nStep input question: q1",
        "current_instruction": "Rewrite the question.",
    }
    copied = "Program 'two': inputs question -> outputs answer - node rewrite: Predict"
    assert echoed(copied, inputs)
    assert echoed("query", inputs)
    assert echoed("### Example 1 (score 0.00)\nStep input question: q1", inputs)
    assert not echoed("Rewrite the question and end the query with an exclamation mark.", inputs)


def test_the_front_keeps_every_program_that_is_best_on_some_example() -> None:
    scores = [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert pareto_front_of(scores) == {1: 2, 2: 1}
    assert pareto_front_of([[1.0, 0.5], [1.0, 0.5]]) == {0: 2}


async def test_the_pool_keeps_a_candidate_that_is_best_on_one_example_only(
    server: OpenAIServer,
) -> None:
    # The graph as given answers q0-q2 and fails q3; the reflection's instruction
    # answers q3 only. It wins its minibatch (q3), scores 0.25 on the validation
    # set against the seed's 0.75, and stays in the pool as a possible parent.
    def responder(body: dict[str, Any]) -> str:
        user = str(body["messages"][-1]["content"])
        if "new_instruction" in json.dumps(body.get("response_format", {})):
            text = "SPECIAL: answer the question."
            return json.dumps({"new_instruction": text, "settings": "none"})
        n = int(re.findall(r"q(\d)", user)[-1])
        special = "SPECIAL" in str(body["messages"][0]["content"])
        return json.dumps({"answer": f"a{n}" if (n == 3) == special else "wrong"})

    server.responder = responder
    data = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(4)]
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    s = Reflect(
        exact_match(),
        lm=case.search(server.url).lm,
        valset=data,
        minibatch_size=1,
        max_iterations=2,
        seed=0,
    )
    best = await s.optimize(graph, data[3:])
    assert [c.scores for c in s.candidates] == [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    assert s.front == {0: 3, 1: 1}
    assert s.best_index == 0
    assert s.best_score == 0.75
    assert (
        best.named_parameters()["answer.instruction"]
        == graph.named_parameters()["answer.instruction"]
    )


@pytest.mark.parametrize("cap", [13, 30, 47])
async def test_a_call_budget_is_never_exceeded_at_the_server(
    server: OpenAIServer, tmp_path: Path, cap: int
) -> None:
    server.responder = case.planted
    s = case.search(server.url, tmp_path, budget=Budget(calls=cap), max_iterations=20)
    await s.optimize(case.graph(), case.DATA)
    assert server.request_count <= cap
    assert server.request_count == s.spent["calls"], "every request is counted"
    assert s.stopped == "budget"
    # It stops only when the next step could not be paid for in full:
    # two minibatches of 2 examples x 2 nodes, one reflection, the valset (6 x 2).
    assert cap - server.request_count < 2 * 2 * 2 + 1 + 6 * 2
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["spent"]["calls"] == server.request_count
    assert summary["stopped"] == "budget"
    points, _ = trial_points(tmp_path)
    assert len(points) == len(s.steps), "every step is a point of the run's report"
    assert read_run(tmp_path).calls == server.request_count


async def test_metric_calls_budget_counts_every_example_scored(server: OpenAIServer) -> None:
    server.responder = case.planted
    s = case.search(server.url, max_metric_calls=20, max_iterations=20)
    await s.optimize(case.graph(), case.DATA)
    assert s.spent["metric_calls"] <= 20
    assert s.spent["metric_calls"] == 6 + sum(st["metric_calls"] for st in s.steps)
    assert s.stopped == "budget"


async def test_same_seed_same_run_other_seed_other_minibatches(server: OpenAIServer) -> None:
    server.responder = case.planted
    first = case.search(server.url)
    await first.optimize(case.graph(), case.DATA)
    second = case.search(server.url)
    await second.optimize(case.graph(), case.DATA)
    other = case.search(server.url, seed=11)
    await other.optimize(case.graph(), case.DATA)
    assert steps(first) == steps(second)
    assert [c.changes for c in first.candidates] == [c.changes for c in second.candidates]
    assert [st["minibatch"] for st in first.steps] != [st["minibatch"] for st in other.steps]


async def test_reflection_may_set_temperature_and_demos_through_the_parameter_door(
    server: OpenAIServer,
) -> None:
    def responder(body: dict[str, Any]) -> str:
        if "new_instruction" in json.dumps(body.get("response_format", {})):
            settings = "temperature=0.3, demos=2, bogus=4, answer.temperature=0.9, k=0"
            return json.dumps({"new_instruction": "KEY2 answer it.", "settings": settings})
        return case.planted(body)  # type: ignore[return-value]

    server.responder = responder
    s = case.search(server.url, max_iterations=1, select="round_robin", seed=1)
    data = [Example(e, query=f"{e['question']}!").with_inputs("question") for e in case.DATA]
    await s.optimize(case.graph(), data)
    proposal = s.steps[0]["proposal"]
    assert s.steps[0]["node"] == "rewrite"  # round robin: iteration 0 -> first node
    # Unknown names, other nodes' slots and values out of range are dropped.
    assert set(proposal) == {"rewrite.instruction", "rewrite.temperature", "rewrite.demos"}
    node = s.steps[0]["node"]
    assert proposal[f"{node}.temperature"] == 0.3
    assert len(proposal[f"{node}.demos"]) == 2
    adjustable = reflections(server)[0]
    assert f"- {node}.temperature: sampling temperature" in adjustable


async def test_reflect_then_bootstrap_then_joint_search_compose(server: OpenAIServer) -> None:
    server.responder = case.planted
    reflected = await case.search(server.url).optimize(case.graph(), case.DATA)
    tuned = reflected.named_parameters()
    lm = case.search(server.url).lm
    booted = await BootstrapFewShot(
        case.metric, threshold=1.0, max_bootstrapped_demos=1, max_labeled_demos=0, lm=lm
    ).optimize(reflected, case.DATA)
    params = booted.named_parameters()
    assert params["answer.instruction"] == tuned["answer.instruction"]
    assert params["answer.demos"], "the reflected program passes, so its traces become demos"
    joint = JointSearch(
        case.metric, num_trials=3, num_demo_sets=1, max_labeled_demos=0, lm=lm, minibatch_size=3
    )
    searched = await joint.optimize(reflected, case.DATA)
    assert "KEY2" in searched.named_parameters()["answer.instruction"]
    assert joint.best_score == 1.0


def test_bad_options_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="choose from"):
        Reflect(case.metric, slots=["instruction", "lm"])
    with pytest.raises(ConfigError, match="round_robin"):
        Reflect(case.metric, select="random")
    assert GEPA is Reflect


async def test_a_run_directory_of_other_settings_is_refused(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = case.planted
    await case.search(server.url, tmp_path, max_iterations=1).optimize(case.graph(), case.DATA)
    with pytest.raises(ConfigError, match="fresh run_dir"):
        await case.search(server.url, tmp_path, seed=9).optimize(case.graph(), case.DATA)


async def test_merge_combines_two_candidates_that_improved_different_nodes(
    server: OpenAIServer,
) -> None:
    # Each key earns part of the credit, more on even questions for KEY1 and on
    # odd ones for KEY2, so two one-key children share the front; merged, they
    # score 1.0 without a third reflection. (q5 keeps the seed on the front, and
    # seed 6 draws the seed as the second reflection's parent.)
    def credit(example: Any, prediction: Any, trace: Any = None) -> Score:
        n = int(example["question"][1:])
        part = 0.6 if n % 2 == 0 else 0.4
        marked = str(trace.node("rewrite").outputs["query"]).endswith("!")
        right = prediction["answer"] == example["answer"]
        if n == 5 and not (marked or right):  # the seed stays on the front
            return Score(1.0)
        feedback = {} if marked else {"rewrite": "add KEY1"}
        feedback |= {} if right else {"answer": "add KEY2"}
        return Score(part * marked + (1 - part) * right, node_feedback=feedback)

    def responder(body: dict[str, Any]) -> str:
        schema = json.dumps(body.get("response_format", {}))
        if "query" in schema and "new_instruction" not in schema:
            return str(case.planted(body))
        if "new_instruction" in schema:
            return str(case.planted(body))
        query = re.findall(r"<query>\n(.*?)\n</query>", str(body["messages"][-1]["content"]))[0]
        right = "KEY2" in str(body["messages"][0]["content"])
        return json.dumps({"answer": f"a{query[1:-1]}" if right else "wrong"})

    server.responder = responder
    s = case.search(
        server.url, merge=True, select="round_robin", max_iterations=4, minibatch_size=3, seed=6
    )
    s.metric = credit
    await s.optimize(case.graph(), case.DATA)
    kinds = [(st["kind"], st.get("node"), st.get("accepted")) for st in s.steps]
    assert ("merge", "merge", True) in kinds, kinds
    merged = next(c for c in s.candidates if c.node == "merge")
    assert set(merged.changes) == {"rewrite.instruction", "answer.instruction"}
    assert merged.score == 1.0
    assert s.best_score == 1.0


async def test_a_reflection_that_changes_nothing_is_not_paid_for_again(
    server: OpenAIServer,
) -> None:
    def responder(body: dict[str, Any]) -> str:
        if "new_instruction" in json.dumps(body.get("response_format", {})):
            user = str(body["messages"][-1]["content"])
            same = re.findall(r"<current_instruction>\n(.*?)\n</current_instruction>", user)[0]
            return json.dumps({"new_instruction": same, "settings": "none"})
        return str(case.planted(body))

    server.responder = responder
    s = case.search(server.url, max_iterations=1)
    await s.optimize(case.graph(), case.DATA)
    assert s.steps[0]["note"] == "the reflection changed nothing"
    assert s.steps[0]["reflection"]["new_instruction"] == "Rewrite the question."
    # The seed on the valset (6 x 2), the parent on the minibatch (2 x 2), one reflection.
    assert server.request_count == 12 + 4 + 1
    assert len(s.candidates) == 1
