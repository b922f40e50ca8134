"""A planted task for Reflect tests, used in process and by a child process (SIGKILL resume).

The program rewrites a question into a query, then answers the query. The test
server answers as a model that follows its instructions literally: the
rewriter marks the query with ``!`` only when its instruction says KEY1, the
answerer answers right only for a marked query and an instruction that says
KEY2. The metric gives half credit for a marked query and says, per node, what
is missing ("add KEY1" to the rewriter, "add KEY2" to the answerer); the
scripted reflection LM adds whatever key the feedback for its step asks for.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.metrics import Score
from rhizome.optimizers.reflect import Reflect
from rhizome.optimizers.trials import Budget
from tests.server import Reply

DATA = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(6)]


def graph() -> Graph:
    """The program: rewrite, then answer."""
    g = Graph("two")
    g.add("rewrite", Predict("question -> query", instruction="Rewrite the question."))
    g.add("answer", Predict("query -> answer", instruction="Answer the query."))
    return g.connect("rewrite", "answer")


def metric(example: Any, prediction: Any, trace: Any = None) -> Score:
    """Half credit for a marked query, full credit for the right answer; feedback per node."""
    query = trace.node("rewrite").outputs.get("query", "") if trace is not None else ""
    if prediction["answer"] == example["answer"]:
        return Score(1.0, feedback="right")
    expected = f"expected {example['answer']!r}, got {prediction['answer']!r}"
    if not str(query).endswith("!"):
        return Score(0.0, feedback=expected, node_feedback={"rewrite": "add KEY1"})
    return Score(0.5, feedback=expected, node_feedback={"answer": "add KEY2"})


def _tag(text: str, name: str) -> str:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    return found.group(1) if found else ""


def planted(body: dict[str, Any], delay: float = 0.0) -> str | Reply:
    """The task model and the reflection model, told apart by the output fields asked for."""
    system = str(body["messages"][0]["content"])
    user = str(body["messages"][-1]["content"])
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
    fields = set(schema.get("properties", {}))
    if "new_instruction" in fields:
        current = _tag(user, "current_instruction")
        keys = re.findall(r"Feedback for this step: add (KEY\d)", _tag(user, "examples"))
        added = " ".join(k for k in dict.fromkeys(keys) if k not in current)
        text = json.dumps({"new_instruction": f"{current} {added}".strip(), "settings": "none"})
    elif "query" in fields:
        question = _tag(user, "question")
        text = json.dumps({"query": question + ("!" if "KEY1" in system else "?")})
    else:
        query = _tag(user, "query")
        right = query.endswith("!") and "KEY2" in system
        text = json.dumps({"answer": f"a{query[1:-1]}" if right else "wrong"})
    return Reply(text=text, delay=delay) if delay else text


def search(url: str, run_dir: Path | None = None, **options: Any) -> Reflect:
    """The search: seed and settings fixed; the task LM reflects too."""
    lm = OpenAILM("test-model", base_url=url, cache=None, max_concurrency=4)
    settings: dict[str, Any] = {
        "max_iterations": 6,
        "minibatch_size": 2,
        "lm": lm,
        "seed": 3,
        "run_dir": run_dir,
    }
    settings.update(options)
    return Reflect(metric, **settings)


if __name__ == "__main__":  # python -m tests.optimizers.reflect_case URL RUN_DIR [CALLS]
    cap = Budget(calls=int(sys.argv[3])) if len(sys.argv) > 3 else None
    run = search(sys.argv[1], Path(sys.argv[2]), budget=cap, max_iterations=8)
    anyio.run(lambda: run.optimize(graph(), DATA))
