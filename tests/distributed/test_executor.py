"""Evaluate and JointSearch on a Ray actor pool give what one process gives."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.example import Example
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from rhizome.scale import RayExecutor, RayOptions
from tests.distributed.conftest import LocalCluster
from tests.distributed.programs import two_step
from tests.server import OpenAIServer

pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

INSTRUCTIONS = {
    "rewrite": ["KEY1 rewrite it.", "Rewrite noisily."],
    "answer": ["Answer noisily.", "KEY2 answer it."],
}
DATA = [
    Example(question=f"q{i}", query=f"q{i}!", answer=f"a{i}").with_inputs("question")
    for i in range(8)
]


def tag(text: str, name: str) -> str:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    return found.group(1) if found else ""


def planted(body: dict[str, Any]) -> str:
    """Right with KEY1 in the rewriter, KEY2 in the answerer and demos (two of three: half)."""
    messages = body["messages"]
    system, user = str(messages[0]["content"]), str(messages[-1]["content"])
    if body["response_format"]["json_schema"]["name"] == "query":
        mark = "!" if "KEY1" in system else "?"
        return json.dumps({"query": tag(user, "question") + mark})
    query = tag(user, "query")
    n = int(query[1:-1])
    good = query.endswith("!") + ("KEY2" in system) + (len(messages) > 2)
    right = good == 3 or (good == 2 and n % 2 == 0)
    return json.dumps({"answer": f"a{n}" if right else "wrong"})


@pytest.fixture(scope="module")
def planted_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        running.responder = planted
        yield running


@pytest.fixture(scope="module")
def pool(ray_cluster: LocalCluster, planted_server: OpenAIServer) -> Iterator[RayExecutor]:
    lm = OpenAILM("test-model", base_url=planted_server.url, cache=None)
    options = RayOptions(actors=2, concurrency=8, batch_size=2, num_cpus=0.5)
    with RayExecutor("tests.distributed.programs:two_step", lm=lm, options=options) as executor:
        yield executor


async def test_evaluate_on_the_pool_equals_one_process(
    pool: RayExecutor, planted_server: OpenAIServer
) -> None:
    async with OpenAILM("test-model", base_url=planted_server.url, cache=None) as lm:
        graph = two_step()
        graph.set_parameters(
            {"rewrite.instruction": "KEY1 rewrite it.", "answer.instruction": "KEY2 answer it."}
        )
        here = await Evaluate(graph, DATA, exact_match(), lm=lm)
        there = await Evaluate(graph, DATA, exact_match(), lm=lm, executor=pool)
    assert [r.score for r in there.results] == [r.score for r in here.results]
    assert [dict(r.prediction or {}) for r in there.results] == [
        dict(r.prediction or {}) for r in here.results
    ]
    assert here.score == 0.5  # the even half: two of three right
    assert there.usage["calls"] == here.usage["calls"] == 16  # traces came back with the rows
    assert there.results[0].trace is not None
    assert [c.predictor for c in there.results[0].trace.lm_calls()] == ["rewrite", "answer"]


async def test_joint_search_on_the_pool_matches_one_process_with_the_same_seed(
    pool: RayExecutor, planted_server: OpenAIServer
) -> None:
    def search(lm: OpenAILM, executor: RayExecutor | None) -> JointSearch:
        return JointSearch(
            exact_match(),
            num_trials=8,
            instructions=INSTRUCTIONS,
            num_demo_sets=1,
            max_labeled_demos=2,
            max_bootstrapped_demos=2,
            minibatch_size=4,
            full_eval_every=4,
            parallel=4,
            lm=lm,
            seed=3,
            executor=executor,
        )

    async with OpenAILM("test-model", base_url=planted_server.url, cache=None) as lm:
        one = search(lm, None)
        best_here = await one.optimize(two_step(), DATA)
        spread = search(lm, pool)
        best_there = await spread.optimize(two_step(), DATA)

    def summary(s: JointSearch) -> list[tuple[int, str, dict[str, int], float, float]]:
        return [(t.tid, t.kind, t.config, t.score, t.usage.get("calls")) for t in s.history]

    assert summary(spread) == summary(one)
    assert spread.best_config == one.best_config
    assert spread.best_score == one.best_score
    assert best_there.named_parameters() == best_here.named_parameters()
