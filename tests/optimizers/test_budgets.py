"""Budgets that mean what they say, counted at the test server: set-up, proposals, trials, fulls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.usage import metered
from rhizome.engine.errors import NodeError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.records import read_jsonl
from rhizome.optimizers.trials import Budget
from rhizome.runs import read_run, trial_points
from tests.reliability import search_case
from tests.server import OpenAIServer


def answering(body: dict[str, Any]) -> str:
    """The planted task model, and any other LM call (proposals, summaries) answered in kind."""
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
    fields = list(schema.get("properties", {}))
    if fields == ["answer"]:
        return str(search_case.planted(body))
    return json.dumps(dict.fromkeys(fields, "KEY answer the question briefly."))


def search(url: str, run_dir: Path | None = None, **options: Any) -> JointSearch:
    lm = OpenAILM("test-model", base_url=url, cache=None, max_concurrency=8)
    settings: dict[str, Any] = {
        "num_trials": 12,
        "prompt_lm": lm,
        "num_instructions": 2,
        "num_demo_sets": 1,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
        "minibatch_size": 4,
        "full_eval_every": 4,
        "parallel": 2,
        "lm": lm,
        "seed": 5,
        "run_dir": run_dir,
    }
    settings.update(options)
    return JointSearch(exact_match(), **settings)


@pytest.mark.parametrize("cap", [9, 30])
async def test_joint_search_never_passes_a_hard_call_cap_set_up_included(
    server: OpenAIServer, tmp_path: Path, cap: int
) -> None:
    server.responder = answering
    s = search(server.url, tmp_path, budget=Budget(calls=cap))
    await s.optimize(search_case.graph(), search_case.DATA)
    assert server.request_count <= cap
    assert server.request_count == s.spent["calls"], "every request is counted, set-up included"
    assert s.spent["setup"]["calls"] > 0, "bootstraps and proposals count"
    assert s.stopped == "budget"
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["spent"]["calls"] == server.request_count
    assert summary["spent"]["setup"] == s.spent["setup"]
    # A set-up the budget cut short is not saved: a resumed run builds it again.
    (setup,) = [r for r in read_jsonl(tmp_path / "trials.jsonl") if r["kind"] == "setup"]
    assert (tmp_path / "space.json").exists() == (setup["usage"]["refused"] == 0)
    points, _ = trial_points(tmp_path)
    assert len(points) == len(s.history), "the set-up row is no trial in reports"
    info = read_run(tmp_path)
    assert (info.calls, info.tokens) == (server.request_count, s.spent["tokens"])


async def test_an_unlimited_run_reports_what_it_spent_and_repeats_no_example(
    server: OpenAIServer,
) -> None:
    server.responder = answering
    s = search(server.url)
    await s.optimize(search_case.graph(), search_case.DATA)
    assert s.stopped == "done"
    assert server.request_count == s.spent["calls"]
    assert s.spent["refused"] == 0
    # A configuration is never scored twice on one example: full evaluations
    # reuse the scores its trials already paid for.
    fulls = [t for t in s.history if t.kind == "full"]
    assert fulls
    for full in fulls:
        earlier = {
            i
            for t in s.history
            if t.kind == "trial" and t.config == full.config and t.tid < full.at
            for i in t.examples
        }
        assert full.ran == full.n - len(earlier & set(full.examples))


async def test_a_full_evaluation_shrinks_to_what_the_budget_can_pay_for(
    server: OpenAIServer,
) -> None:
    # No set-up calls; one node: trial 0 costs 4 calls (examples 4 of 8), and
    # the full evaluation of its configuration reuses those 4 and can pay for 2 more.
    server.responder = answering
    options: dict[str, Any] = {"prompt_lm": None, "num_demo_sets": 0, "max_labeled_demos": 0}
    options |= {"parallel": 1, "full_eval_every": 1, "num_trials": 1}
    s = search(server.url, budget=Budget(calls=6), **options)
    await s.optimize(search_case.graph(), search_case.DATA)
    (trial, full) = s.history
    assert (trial.n, trial.ran) == (4, 4)
    assert (full.n, full.ran) == (6, 2), "shrunk to the examples the budget pays for"
    assert set(trial.examples) < set(full.examples)
    assert server.request_count == 6
    assert s.stopped == "budget"


async def test_cache_hits_are_reported_apart_and_do_not_spend_the_call_limit(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = lambda body: json.dumps({"answer": "a0"})
    cache = ResponseCache(tmp_path / "cache.sqlite")
    lm = OpenAILM("test-model", base_url=server.url, cache=cache)
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    data = search_case.DATA[:3]
    try:
        with metered(max_calls=3) as meter:
            await Evaluate(graph, data, exact_match(), lm=lm, progress=False)
            await Evaluate(graph, data, exact_match(), lm=lm, progress=False)
            assert (meter.calls, meter.cache_hits) == (3, 3)
            with pytest.raises(NodeError, match=r"SpendLimitError: .*3 of 3 calls"):
                await graph.run({"question": "new"}, lm=lm)
    finally:
        cache.close()
    assert server.request_count == 3
    assert meter.refused == 1


async def test_meters_nest_and_the_outer_limit_holds_inside(server: OpenAIServer) -> None:
    server.responder = lambda body: json.dumps({"answer": "x"})
    lm = OpenAILM("test-model", base_url=server.url, cache=None)
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    with metered(max_calls=2) as outer:
        with metered() as inner:
            result = await Evaluate(
                graph,
                [Example(question=f"q{i}", answer="x").with_inputs("question") for i in range(4)],
                exact_match(),
                lm=lm,
            )
    assert server.request_count == 2
    assert (outer.calls, inner.calls) == (2, 2)
    assert result.failures == 2, "the examples the limit refused fail; the rest finish"
