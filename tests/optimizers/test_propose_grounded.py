"""Grounded proposals: what JointSearch's prompt model is shown, read at the test server.

The task LM and the prompt model are both :class:`OpenAILM` clients of the
project's HTTP test server, so every proposal is a real request on the one LM
call path, and the assertions read the request text the server received.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.propose import TIPS, propose_instructions
from tests.server import OpenAIServer

DATA = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(8)]


def section(text: str, name: str) -> str | None:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    return found.group(1) if found else None


def system(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


def user(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def is_proposal(body: dict[str, Any]) -> bool:
    return system(body).startswith("You write the instruction for one step")


def respond(body: dict[str, Any]) -> str:
    """Prompt model and task model in one: queries add "!", answers are right for even items."""
    text = user(body)
    if system(body).startswith("Describe this dataset"):
        return json.dumps({"summary": "Tiny questions whose answers are codes."})
    if is_proposal(body):
        step = re.findall(r"Step '(\w+)'", section(text, "step") or "")[0]
        tip = section(text, "tip") or ""
        return json.dumps({"proposed_instruction": f"For {step}, do it well. {tip}"})
    if "- query" in system(body).split("Outputs:")[1]:
        return json.dumps({"query": f"{section(text, 'question')}!"})
    n = int((section(text, "query") or "q0!")[1:-1])
    return json.dumps({"answer": f"a{n}" if n % 2 == 0 else "wrong"})


def two_step() -> Graph:
    g = Graph("two")
    g.add("rewrite", Predict("question -> query"))
    g.add("answer", Predict("query -> answer"))
    return g.connect("rewrite", "answer")


def joint(lm: OpenAILM, **extra: Any) -> JointSearch:
    return JointSearch(
        exact_match(),
        prompt_lm=lm,
        lm=lm,
        num_instructions=3,
        num_demo_sets=1,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
        num_trials=4,
        minibatch_size=4,
        full_eval_every=4,
        parallel=2,
        concurrency=4,
        **extra,
    )


async def test_each_grounding_piece_reaches_the_proposal_prompt(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = respond
    search = joint(lm)
    await search.optimize(two_step(), DATA)
    asks = [user(b) for b in server.requests if is_proposal(b)]
    answer_asks = [a for a in asks if "Step 'answer'" in (section(a, "step") or "")]
    assert len(asks) == 6  # 3 per node, each a request at the server
    assert len(answer_asks) == 3
    for ask in answer_asks:
        # A summary of the data: statistics and the prompt model's description.
        summary = section(ask, "data_summary") or ""
        assert "8 examples." in summary
        assert "codes" in summary
        # The graph, and the node's place in it.
        assert "edge rewrite.query -> answer.query" in (section(ask, "program") or "")
        assert "comes from output 'query' of 'rewrite'" in (section(ask, "step") or "")
        # Successful demos: from passing traces only (even items), intermediate fields included.
        shown = section(ask, "examples") or ""
        assert re.search(r"query: q\d!", shown)
        assert {int(n) % 2 for n in re.findall(r"answer: a(\d)", shown)} == {0}
        assert "wrong" not in shown
        # Nothing earlier to beat on a first search.
        assert section(ask, "earlier_instructions") == "(none yet)"
    # A varied tip: the three proposals of a node get three different tips.
    tips = [section(a, "tip") or "" for a in answer_asks]
    assert len(set(tips)) == 3
    assert set(tips) <= set(TIPS)


async def test_proposing_again_shows_earlier_proposals_with_their_scores(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = respond
    search = joint(lm)
    await search.optimize(two_step(), DATA)
    first = sum(is_proposal(b) for b in server.requests)
    await search.optimize(two_step(), DATA)
    again = [user(b) for b in server.requests if is_proposal(b)][first:]
    assert len(again) == 6
    earlier = [section(a, "earlier_instructions") or "" for a in again]
    rewrite = [e for a, e in zip(again, earlier, strict=True) if "Step 'rewrite'" in a]
    for text in rewrite:
        assert re.search(r"Instruction #1:\n.+\nScore: \d\.\d{3}", text)
        assert "For rewrite, do it well." in text or "produce the fields `query`" in text


async def test_tips_follow_the_seed(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = respond
    graph = Graph("one").add("answer", Predict("question -> answer"))

    async def tips(seed: int) -> list[str]:
        server.requests.clear()
        await propose_instructions(graph, DATA, prompt_lm=lm, n=2, seed=seed, summarize=False)
        return sorted(section(user(b), "tip") or "" for b in server.requests if is_proposal(b))

    assert await tips(0) == await tips(0)
    assert len({tuple(await tips(seed)) for seed in range(6)}) > 1
