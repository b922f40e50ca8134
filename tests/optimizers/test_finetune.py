"""Fine-tuning export: chat JSONL from the LM calls of runs that passed the metric."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.finetune import export_finetune_data
from rhizome.optimizers.metrics import exact_match

DATA = [Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(6)]


def field(request: LMRequest, name: str) -> str:
    found = re.findall(rf"<{name}>\n(.*?)\n</{name}>", str(request.messages[-1]["content"]))
    return found[0] if found else ""


def responder(request: LMRequest, sample: int) -> str:
    """Rewrites the question, then answers right for even-numbered questions only."""
    if "- query" in str(request.messages[0]["content"]).split("Outputs:")[1]:
        return f"<query>\n{field(request, 'question')} please\n</query>"
    n = int(field(request, "query").split()[0][1:])
    return f"<answer>\n{f'a{n}' if n % 2 == 0 else 'wrong'}\n</answer>"


def two_step() -> Graph:
    g = Graph("two")
    g.add("rewrite", Predict("question -> query"))
    g.add("answer", Predict("query -> answer"))
    return g.connect("rewrite", "answer")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_writes_one_chat_file_per_node_from_passing_runs(tmp_path: Path) -> None:
    report = await export_finetune_data(
        two_step(), DATA, exact_match(), tmp_path / "ft", lm=FakeLM(responder)
    )
    assert report.examples == 6
    assert report.passed == 3
    assert report.counts == {"rewrite": 3, "answer": 3}
    assert report.files == {
        "rewrite": tmp_path / "ft" / "rewrite.jsonl",
        "answer": tmp_path / "ft" / "answer.jsonl",
    }
    answers = lines(tmp_path / "ft" / "answer.jsonl")
    assert len(answers) == 3
    for row in answers:
        assert list(row) == ["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) for m in row["messages"])
    replies = sorted(row["messages"][-1]["content"] for row in answers)
    assert replies == [
        "<answer>\na0\n</answer>",
        "<answer>\na2\n</answer>",
        "<answer>\na4\n</answer>",
    ]
    rewrites = lines(tmp_path / "ft" / "rewrite.jsonl")
    assert {r["messages"][-1]["content"] for r in rewrites} == {
        "<query>\nq0 please\n</query>",
        "<query>\nq2 please\n</query>",
        "<query>\nq4 please\n</query>",
    }


async def test_one_shared_file_tags_each_line_with_its_node(tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    report = await export_finetune_data(
        two_step(), DATA, exact_match(), out, per_node=False, lm=FakeLM(responder)
    )
    rows = lines(out)
    assert len(rows) == 6
    assert sorted(r["metadata"]["node"] for r in rows) == ["answer"] * 3 + ["rewrite"] * 3
    assert report.files == {"rewrite": out, "answer": out}


async def test_repeated_runs_are_written_once_and_threshold_applies(tmp_path: Path) -> None:
    data = DATA + DATA
    report = await export_finetune_data(
        two_step(), data, exact_match(), tmp_path, threshold=0.0, lm=FakeLM(responder)
    )
    assert report.passed == 12  # threshold 0 keeps every run
    assert report.counts == {"rewrite": 6, "answer": 6}


async def test_zero_shot_prompts_drop_the_demos(tmp_path: Path) -> None:
    graph = two_step()
    graph.set_parameters({"answer.demos": [{"query": "q8 please", "answer": "a8"}]})
    with_demos = await export_finetune_data(
        graph, DATA, exact_match(), tmp_path / "a", lm=FakeLM(responder)
    )
    without = await export_finetune_data(
        graph, DATA, exact_match(), tmp_path / "b", zero_shot=True, lm=FakeLM(responder)
    )
    assert with_demos.counts == without.counts
    kept = lines(tmp_path / "a" / "answer.jsonl")[0]["messages"]
    bare = lines(tmp_path / "b" / "answer.jsonl")[0]["messages"]
    assert [m["role"] for m in kept] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["role"] for m in bare] == ["system", "user", "assistant"]
    assert bare[1]["content"] == kept[3]["content"]


async def test_repaired_calls_train_on_the_clean_prompt(tmp_path: Path) -> None:
    def sloppy(request: LMRequest, sample: int) -> str:
        if len(request.messages) == 2:  # the first attempt: no tags
            return "a0"
        return "<answer>\na0\n</answer>"

    graph = Graph("qa").add("answer", Predict("question -> answer"))
    report = await export_finetune_data(graph, DATA[:1], exact_match(), tmp_path, lm=FakeLM(sloppy))
    assert report.counts == {"answer": 1}
    messages = lines(tmp_path / "answer.jsonl")[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == "<answer>\na0\n</answer>"
