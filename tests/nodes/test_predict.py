"""Predict and ChainOfThought nodes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LM
from rhizome.engine.context import context
from rhizome.engine.errors import SignatureError
from rhizome.engine.trace import NodeRecord, Trace, node_record, recording
from rhizome.nodes.predict import ChainOfThought, Predict


async def test_predict_fields_and_forward() -> None:
    lm = FakeLM(["<answer>4</answer>"])
    node = Predict("question -> answer: int", instruction="Add.", temperature=0.0, timeout=5)
    assert node.kind == "Predict"
    assert list(node.inputs) == ["question"]
    assert list(node.outputs) == ["answer"]
    assert node.timeout == 5
    assert node.predictor.instruction == "Add."
    with context(lm=lm):
        assert await node.forward(question="2+2?") == {"answer": 4}
    assert lm.requests[0].temperature == 0.0
    assert lm.requests[0].messages[0]["content"].startswith("Add.")


async def test_chain_of_thought_adds_reasoning_first_and_returns_it() -> None:
    lm = FakeLM(["<reasoning>2 and 2 make 4</reasoning><answer>4</answer>"])
    node = ChainOfThought("question -> answer: int", lm=lm)
    assert node.kind == "ChainOfThought"
    assert list(node.outputs) == ["reasoning", "answer"]
    assert "step by step" in node.outputs["reasoning"].desc
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="solve", kind=node.kind)):
        out = await node.forward(question="2+2?")
    assert out == {"reasoning": "2 and 2 make 4", "answer": 4}
    assert trace.lm_calls("solve")[0].outputs == out
    system = lm.requests[0].messages[0]["content"]
    assert system.index("<reasoning>") < system.index("<answer>")


def test_chain_of_thought_keeps_an_existing_reasoning_output() -> None:
    node = ChainOfThought("question -> reasoning, answer")
    assert list(node.outputs) == ["reasoning", "answer"]
    with pytest.raises(SignatureError, match="rename that input"):
        ChainOfThought("reasoning, question -> answer")


def test_named_predictors_and_copy_are_independent() -> None:
    node = ChainOfThought("question -> answer", demos=[{"question": "q", "answer": "a"}])
    assert [(role, p) for role, p in node.named_predictors()] == [("", node.predictor)]
    twin = node.copy()
    twin.predictor.demos.append({"question": "q2", "answer": "b"})
    twin.predictor.instruction = "changed"
    assert len(node.predictor.demos) == 1
    assert node.predictor.instruction != "changed"


async def test_predict_and_chain_of_thought_over_real_http(server: Any, lm: LM) -> None:
    def respond(body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        fields = {"answer": "Paris"}
        if "- reasoning (str)" in system:
            fields = {"reasoning": "It is the capital.", **fields}
        if "a single JSON object" in system:
            return json.dumps(fields)
        return "\n".join(f"<{k}>\n{v}\n</{k}>" for k, v in fields.items())

    server.responder = respond
    trace = Trace()
    with recording(trace), context(lm=lm):
        with node_record(NodeRecord(node="plain", kind="Predict")):
            plain = await Predict("question -> answer").forward(question="Capital of France?")
        with node_record(NodeRecord(node="cot", kind="ChainOfThought")):
            cot_node = ChainOfThought("question -> answer", adapter=TextAdapter())
            cot = await cot_node.forward(question="Capital?")
        with node_record(NodeRecord(node="json", kind="Predict")):
            forced = await Predict("question -> answer", adapter=JSONAdapter()).forward(
                question="?"
            )
    assert plain == {"answer": "Paris"}
    assert cot == {"reasoning": "It is the capital.", "answer": "Paris"}
    assert forced == {"answer": "Paris"}
    assert len(server.requests) == 3
    first = server.requests[0]["messages"]
    assert first[0]["role"] == "system"
    assert "Capital of France?" in first[-1]["content"]
    assert "response_format" not in server.requests[1]
    schema_sent = "response_format" in server.requests[2]
    assert schema_sent == lm.capabilities.json_schema
    calls = trace.lm_calls()
    assert [c.predictor for c in calls] == ["plain", "cot", "json"]
    assert all(c.usage.prompt_tokens > 0 for c in calls)
    assert all(c.error is None for c in calls)
