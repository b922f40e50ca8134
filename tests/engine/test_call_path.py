"""One LM call path and one run door.

Every LM call, an agent's function-calling step included, goes through
``run_predictor`` (demos, selector, repair, length retry, logging); ``n``
samples are fanned out in one place, with deterministic sample indices.
``Graph.plan()`` is the public compiled plan and ``Graph.run(trace=...)``
records into a given trace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.run import Sample, ToolUse, run_predictor
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import (
    Capabilities,
    Choice,
    LMRequest,
)
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError, GraphError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import NodeRecord, Trace, node_record, recording
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.react import ReAct
from rhizome.tools.agent.calculator import calculator
from tests.server import OpenAIServer, Reply


def answer(n: int | str) -> str:
    return f"<answer>{n}</answer>"


# ---------------------------------------------------------------- n samples, one place


def without_n(server: OpenAIServer, cache: ResponseCache | None) -> OpenAILM:
    """A client on ``server`` that asks for one sample per request."""
    caps = Capabilities(n=False)
    return OpenAILM("test-model", base_url=server.url, cache=cache, capabilities=caps)


async def test_n_samples_without_server_n_are_three_requests_with_stable_cache_keys(
    server: OpenAIServer, tmp_path: Path
) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    lm = without_n(server, cache)
    count = iter(range(100))
    server.responder = lambda body: answer(next(count))
    predictor = Predictor("question -> answer: int", lm=lm, temperature=1.0)
    trace = Trace()
    try:
        with recording(trace), node_record(NodeRecord(node="x", kind="Predict")):
            first = await predictor.sample({"question": "q"}, n=3)
        assert server.request_count == 3
        assert all("n" not in body for body in server.requests)
        assert sorted(s["answer"] for s in first) == [0, 1, 2]
        assert len(trace.lm_calls("x")) == 3
        # sample i has its own cache key, the same on every run: nothing new is sent,
        # and the samples come back in the same order
        again = await predictor.sample({"question": "q"}, n=3)
        assert server.request_count == 3
        assert again == first
        # another sample index asks anew
        with context(sample=1):
            fresh = await predictor.sample({"question": "q"}, n=3)
        assert server.request_count == 6
        assert sorted(s["answer"] for s in fresh) == [3, 4, 5]
    finally:
        await lm.aclose()
        cache.close()


async def test_fan_out_gives_the_samples_of_one_request_in_order() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        return answer(sample)

    inputs = {"question": "q"}
    one = FakeLM(reply, capabilities=Capabilities(n=True))
    split = FakeLM(reply, capabilities=Capabilities(n=False))
    with context(sample=2):
        together = await Predictor("question -> answer: int", lm=one).sample(inputs, n=3)
        apart = await Predictor("question -> answer: int", lm=split).sample(inputs, n=3)
    assert together == apart == [{"answer": 6}, {"answer": 7}, {"answer": 8}]
    assert [r.n for r in one.requests] == [3]
    assert [r.n for r in split.requests] == [1, 1, 1]


async def test_client_refuses_n_its_server_cannot_sample(server: OpenAIServer) -> None:
    lm = without_n(server, None)
    with pytest.raises(ConfigError, match="n=3"):
        await lm.complete(LMRequest(messages=({"role": "user", "content": "hi"},), n=3))
    await lm.aclose()
    assert server.request_count == 0


# ---------------------------------------------------------------- tools through run_predictor


def first_call(choice: Choice, adapter: Any) -> dict[str, Any]:
    return {"thought": choice.text, "tool_name": choice.tool_calls[0].name, "tool_args": {}}


OFFER = ToolUse(
    tools=({"type": "function", "function": {"name": "lookup", "parameters": {}}},),
    read=first_call,
    choice="auto",
    hint="You may call a tool.",
)


async def test_run_predictor_with_tools_returns_calls_or_fields(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    text = json.dumps({"thought": "t", "tool_name": "x", "tool_args": {}})  # JSON: the default
    server.script([Reply(text="hm", tool_calls=[{"name": "lookup", "arguments": {}}]), text])
    predictor = Predictor("question -> thought, tool_name, tool_args: dict", lm=lm)
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="agent", kind="ReAct")):
        (by_call,) = await run_predictor(predictor, {"question": "?"}, tools=OFFER)
        (by_text,) = await run_predictor(predictor, {"question": "?"}, tools=OFFER)
    assert isinstance(by_call, Sample)
    assert by_call.tool_calls[0].name == "lookup"
    assert by_call.outputs == {"thought": "hm", "tool_name": "lookup", "tool_args": {}}
    assert by_text == Sample({"thought": "t", "tool_name": "x", "tool_args": {}})
    body = server.requests[0]
    assert body["tools"] == list(OFFER.tools)
    assert body["tool_choice"] == "auto"
    assert "response_format" not in body
    assert str(body["messages"][-1]["content"]).endswith("You may call a tool.")
    logged = trace.lm_calls("agent")
    assert [c.finish_reason for c in logged] == ["tool_calls", "stop"]
    assert json.loads(logged[0].reply.split("\n", 1)[1])["tool_calls"][0]["name"] == "lookup"
    # a plain call still returns plain dicts
    plain = Predictor("question -> answer", lm=FakeLM([answer("a")]))
    assert await plain(question="?") == {"answer": "a"}


async def test_react_native_against_a_real_server(server: OpenAIServer, lm: OpenAILM) -> None:
    square = {"name": "calculator", "arguments": {"expression": "6 * 6"}}
    finish = {"name": "finish", "arguments": {"answer": 36}}
    server.script([Reply(text="square it", tool_calls=[square]), Reply(tool_calls=[finish])])
    agent = ReAct("question -> answer: int", tools=[calculator])
    g = Graph("g").add("agent", agent)
    p = await g.run(question="What is 6 squared?", lm=lm)
    assert p["answer"] == 36
    assert [s["observation"] for s in p["trajectory"]] == ["36", "done"]
    assert server.request_count == 2
    names = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert names == ["calculator", "finish"]
    assert p.trace is not None
    calls = p.trace.lm_calls("agent.step")
    assert [c.finish_reason for c in calls] == ["tool_calls", "tool_calls"]
    assert calls[0].outputs["tool_args"] == {"expression": "6 * 6"}
    assert calls[0].model == "test-model"


# ---------------------------------------------------------------- plan() and run(trace=)


def doubler() -> Graph:
    g = Graph("g")
    g.add("double", FunctionNode(lambda x: 2 * x, outputs={"y": int}))
    g.add("show", FunctionNode(lambda y: f"y={y}", outputs={"text": str}))
    return g.connect("double", "show")


def test_plan_is_the_validated_plan_kept_until_a_change() -> None:
    g = doubler()
    plan = g.plan()
    assert g.plan() is plan
    assert plan.order == ("double", "show")
    assert list(plan.inputs) == ["x"]
    assert list(plan.outputs) == ["text"]
    assert plan.nodes["show"].preds == ("double",)
    g.add("extra", FunctionNode(lambda text: text, outputs={"copy": str}))
    assert g.plan() is not plan
    broken = Graph("broken", outputs=["nope"])
    broken.add("a", FunctionNode(lambda x: x, outputs={"y": int}))
    with pytest.raises(GraphError, match="nope"):
        broken.plan()


async def test_run_records_into_the_given_trace() -> None:
    g = doubler()
    trace = Trace()
    p = await g.run({"x": 4}, trace=trace)
    assert p["text"] == "y=8"
    assert p.trace is trace
    assert trace.inputs == {"x": 4}
    assert [r.node for r in trace.records] == ["double", "show"]
    assert g(x=1, trace=(sync := Trace()))["text"] == "y=2"
    assert sync.outputs == {"text": "y=2"}


async def test_run_keeps_a_failed_run_in_the_given_trace() -> None:
    g = Graph("g")
    g.add("ok", FunctionNode(lambda x: x, outputs={"y": int}))
    g.add("bad", FunctionNode(lambda y: 1 // 0, outputs={"z": int}))
    g.connect("ok", "bad")
    trace = Trace()
    with pytest.raises(NodeError):
        await g.run(x=1, trace=trace)
    assert trace.error is not None
    assert "ZeroDivisionError" in trace.error
    assert trace.node("ok").outputs == {"y": 1}
