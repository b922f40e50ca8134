"""A small JointSearch used by tests/reliability/test_search_resume.py, in and out of process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from tests.server import Reply

DATA = [
    Example(question=f"question #{i}#", answer=f"a{i}").with_inputs("question") for i in range(8)
]
NUM_TRIALS = 12


def search(url: str, run_dir: Path) -> JointSearch:
    """The search: instruction and demos of one node, seed fixed, journaled in ``run_dir``."""
    lm = OpenAILM("test-model", base_url=url, cache=None, max_concurrency=8)
    return JointSearch(
        exact_match(),
        num_trials=NUM_TRIALS,
        instructions={"answer": ["Answer noisily.", "KEY answer it."]},
        num_demo_sets=1,
        max_bootstrapped_demos=2,
        max_labeled_demos=2,
        minibatch_size=4,
        full_eval_every=4,
        parallel=2,
        lm=lm,
        seed=5,
        run_dir=run_dir,
    )


def graph() -> Graph:
    """The program searched."""
    return Graph("qa").add("answer", Predict("question -> answer"))


def planted(body: dict[str, Any], delay: float = 0.0) -> str | Reply:
    """Right only with KEY in the instruction and demos in the prompt; half right with one."""
    messages = body["messages"]
    system = str(messages[0]["content"])
    n = int(str(messages[-1]["content"]).split("#")[1])
    good = ("KEY" in system) + (len(messages) > 2)
    right = good == 2 or (good == 1 and n % 2 == 0)
    text = json.dumps({"answer": f"a{n}" if right else "wrong"})
    return Reply(text=text, delay=delay) if delay else text


if __name__ == "__main__":  # python -m tests.reliability.search_case URL RUN_DIR
    anyio.run(lambda: search(sys.argv[1], Path(sys.argv[2])).optimize(graph(), DATA))
