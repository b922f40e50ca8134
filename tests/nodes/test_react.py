"""ReAct: the agent loop, both protocols, tool errors, finish validation, extract."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import (
    Capabilities,
    Choice,
    HistoryEntry,
    LMRequest,
    LMResponse,
    ToolCall,
    Usage,
)
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.react import ReAct, format_trajectory
from rhizome.tools.agent.calculator import calculator
from rhizome.tools.agent.tool import tool


@tool
def lookup(name: str) -> str:
    """Look up a person's age.

    Args:
        name: The person's name.
    """
    ages = {"ada": "36", "alan": "41"}
    if name.lower() not in ages:
        raise KeyError(f"no one called {name}")
    return ages[name.lower()]


def step(thought: str, tool_name: str, args: dict[str, Any]) -> str:
    return (
        f"<thought>{thought}</thought>\n<tool_name>{tool_name}</tool_name>\n"
        f"<tool_args>{json.dumps(args)}</tool_args>"
    )


class ToolCallLM:
    """A scripted LM that answers with native function calls (logic tests only)."""

    def __init__(self, script: Callable[[LMRequest], Choice]) -> None:
        self.script = script
        self.requests: list[LMRequest] = []

    @property
    def name(self) -> str:
        return "tool-fake"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(tools=True)

    async def complete(self, request: LMRequest, *, sample: int = 0) -> LMResponse:
        self.requests.append(request)
        return LMResponse(choices=(self.script(request),), usage=Usage(prompt_tokens=7))

    def inspect_history(self, n: int = 1) -> Sequence[HistoryEntry]:
        return []


def call(name: str, args: dict[str, Any] | str, text: str = "") -> Choice:
    raw = args if isinstance(args, str) else json.dumps(args)
    return Choice(text=text, tool_calls=(ToolCall(id="c1", name=name, arguments=raw),))


# ---------------------------------------------------------------- text protocol


async def test_text_protocol_calls_tools_and_finishes() -> None:
    lm = FakeLM(
        [
            step("I need Ada's age", "lookup", {"name": "Ada"}),
            step("double it", "calculator", {"expression": "36 * 2"}),
            step("done", "finish", {"answer": "72"}),
        ]
    )
    agent = ReAct("question -> answer: int", tools=[lookup, calculator])
    g = Graph("g").add("agent", agent)
    p = await g.run(question="What is twice Ada's age?", lm=lm)
    assert p["answer"] == 72
    trajectory = p["trajectory"]
    assert [(s["tool"], s["observation"]) for s in trajectory] == [
        ("lookup", "36"),
        ("calculator", "72"),
        ("finish", "done"),
    ]
    assert trajectory[0] == {
        "thought": "I need Ada's age",
        "tool": "lookup",
        "args": {"name": "Ada"},
        "observation": "36",
    }
    # the model saw the earlier observations in later steps
    third = str(lm.requests[2].messages[-1]["content"])
    assert "[step 2]" in third
    assert "observation: 72" in third
    assert p.trace is not None
    assert p.trace.node("agent").outputs["trajectory"] == trajectory
    assert len(p.trace.lm_calls("agent.step")) == 3
    assert p.trace.lm_calls("agent.step")[0].outputs["tool_name"] == "lookup"
    assert dict(g.named_predictors()) == {"agent.step": agent.step, "agent.extract": agent.extract}


async def test_tool_errors_and_bad_arguments_become_observations() -> None:
    lm = FakeLM(
        [
            step("try", "lookup", {"who": "Ada"}),
            step("try again", "lookup", {"name": "Grace"}),
            step("give up", "finish", {"answer": 0}),
        ]
    )
    agent = ReAct("question -> answer", tools=[lookup])
    with context(lm=lm):
        out = await agent.forward(question="How old is Grace?")
    bad_args, raised = (s["observation"] for s in out["trajectory"][:2])
    assert bad_args.startswith("Error: invalid arguments for tool 'lookup'")
    assert "missing required argument 'name'" in bad_args
    assert "unknown argument 'who'" in bad_args
    assert raised.startswith("Error: tool 'lookup' failed")
    assert "no one called Grace" in raised
    assert out["answer"] == "0"  # a number given for a text output becomes its text


async def test_invalid_finish_arguments_are_sent_back() -> None:
    lm = FakeLM(
        [
            step("guess", "finish", {"answer": "about forty"}),
            step("guess", "finish", {}),
            step("fix", "finish", {"answer": 41}),
        ]
    )
    agent = ReAct("question -> answer: int", tools=[lookup])
    with context(lm=lm):
        out = await agent.forward(question="Alan?")
    assert out["answer"] == 41
    first, second = (s["observation"] for s in out["trajectory"][:2])
    assert first.startswith("Error: invalid arguments for finish: 'answer' is not a valid int")
    assert second == "Error: invalid arguments for finish: missing 'answer' (int)"


async def test_max_steps_ends_with_the_extract_predictor() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        if "<answer>" in str(request.messages[0]["content"]):
            return "<answer>36</answer>"
        return step("look again", "lookup", {"name": "Ada"})

    lm = FakeLM(reply)
    agent = ReAct("question -> answer: int", tools=[lookup], max_steps=2)
    g = Graph("g").add("agent", agent)
    p = await g.run(question="Ada?", lm=lm)
    assert p["answer"] == 36
    assert len(p["trajectory"]) == 2
    assert lm.calls == 3
    assert p.trace is not None
    extract = p.trace.lm_calls("agent.extract")[0]
    assert "[step 2]" in extract.inputs["trajectory"]


async def test_unreadable_reply_is_an_observation_not_a_crash() -> None:
    lm = FakeLM(["nonsense", "nonsense", step("ok", "finish", {"answer": "x"})])
    agent = ReAct("question -> answer", tools=[lookup])
    with context(lm=lm):
        out = await agent.forward(question="?")
    assert out["answer"] == "x"
    assert out["trajectory"][0]["observation"].startswith("Error: your reply could not be read")


def test_step_prompt_lists_tools_and_finish() -> None:
    agent = ReAct("question -> answer: int", tools=[lookup, calculator], max_steps=3)
    text = agent.step.instruction
    assert "(1) lookup: Look up a person's age." in text
    assert "name (string, required): The person's name." in text
    assert "(3) finish: end the task; arguments: answer (int)" in text
    assert list(agent.step.signature.inputs) == ["question", "trajectory"]
    assert list(agent.step.signature.outputs) == ["thought", "tool_name", "tool_args"]
    assert list(agent.outputs) == ["answer", "trajectory"]


def test_config_errors() -> None:
    @tool
    def finish(x: str) -> str:
        """Finish."""
        return x

    with pytest.raises(ConfigError, match="named 'finish'"):
        ReAct("q -> a", tools=[finish])
    with pytest.raises(ConfigError, match="unique"):
        ReAct("q -> a", tools=[lookup, lookup])
    with pytest.raises(ConfigError, match="max_steps"):
        ReAct("q -> a", tools=[lookup], max_steps=0)
    with pytest.raises(ConfigError, match="list of tools"):
        ReAct("q -> a", tools=lookup)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="protocol"):
        ReAct("q -> a", tools=[], protocol="xml")  # type: ignore[arg-type]


def test_plain_functions_are_wrapped_as_tools_and_copies_share_them() -> None:
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    agent = ReAct("q -> a", tools=[add])
    assert list(agent.tools) == ["add"]
    twin = agent.copy()
    assert twin.tools["add"] is agent.tools["add"]
    twin.step.instruction = "changed"
    assert agent.step.instruction != "changed"


def test_format_trajectory() -> None:
    assert format_trajectory([]) == "(no steps yet)"
    text = format_trajectory([{"thought": "t", "tool": "x", "args": {"a": 1}, "observation": "o"}])
    assert text == '[step 1]\nthought: t\ntool: x\nargs: {"a": 1}\nobservation: o'


# ---------------------------------------------------------------- native protocol


async def test_native_protocol_sends_tools_and_reads_function_calls() -> None:
    def script(request: LMRequest) -> Choice:
        last = request.messages[-1]
        if last["role"] == "tool" and last["content"] == "36":  # the observation, by call id
            return call("finish", {"answer": 36}, text="<thought>found it</thought>")
        return call("lookup", {"name": "Ada"}, text="I should look her up")

    lm = ToolCallLM(script)
    agent = ReAct("question -> answer: int", tools=[lookup])
    g = Graph("g").add("agent", agent)
    p = await g.run(question="How old was Ada?", lm=lm)
    assert p["answer"] == 36
    assert [s["thought"] for s in p["trajectory"]] == ["I should look her up", "found it"]
    tools = lm.requests[0].tools
    assert tools is not None
    assert [t["function"]["name"] for t in tools] == ["lookup", "finish"]
    assert tools[1]["function"]["parameters"]["properties"]["answer"]["type"] == "integer"
    assert p.trace is not None
    calls = p.trace.lm_calls("agent.step")
    assert len(calls) == 2
    assert calls[0].outputs == {
        "thought": "I should look her up",
        "tool_name": "lookup",
        "tool_args": {"name": "Ada"},
    }
    assert calls[0].usage.prompt_tokens == 7
    assert '"tool_calls"' in calls[0].reply
    assert "call the tool (or finish) directly" in str(calls[0].messages[-1]["content"])


async def test_native_parallel_calls_run_in_order_within_one_step() -> None:
    def script(request: LMRequest) -> Choice:
        if request.messages[-1].get("tool_call_id") == "b":
            return call("finish", {"answer": 77})
        both = (
            ToolCall(id="a", name="lookup", arguments='{"name": "Ada"}'),
            ToolCall(id="b", name="lookup", arguments='{"name": "Alan"}'),
        )
        return Choice(text="", tool_calls=both)

    lm = ToolCallLM(script)
    agent = ReAct("question -> answer: int", tools=[lookup])
    with context(lm=lm):
        out = await agent.forward(question="sum of ages?")
    assert [(s["args"], s["observation"]) for s in out["trajectory"][:2]] == [
        ({"name": "Ada"}, "36"),
        ({"name": "Alan"}, "41"),
    ]
    assert out["answer"] == 77
    assert len(lm.requests) == 2


async def test_native_protocol_keeps_demos_and_accepts_a_text_reply() -> None:
    lm = ToolCallLM(lambda r: Choice(text=step("text it is", "finish", {"answer": 1})))
    agent = ReAct("question -> answer: int", tools=[lookup], protocol="native")
    agent.step.demos = [
        {
            "question": "Alan?",
            "trajectory": "(no steps yet)",
            "thought": "look up Alan",
            "tool_name": "lookup",
            "tool_args": {"name": "Alan"},
        }
    ]
    with context(lm=lm):
        out = await agent.forward(question="one?")
    assert out["answer"] == 1
    assert any("look up Alan" in str(m["content"]) for m in lm.requests[0].messages)
    assert lm.requests[0].tools is not None


async def test_native_unknown_tool_and_bad_json_are_observations() -> None:
    replies = iter(
        [
            call("search", {"q": "x"}),
            call("lookup", "{not json"),
            call("finish", {"answer": "ok"}),
        ]
    )
    lm = ToolCallLM(lambda r: next(replies))
    agent = ReAct("question -> answer", tools=[lookup], protocol="native")
    with context(lm=lm):
        out = await agent.forward(question="?")
    first, second = (s["observation"] for s in out["trajectory"][:2])
    assert first == "Error: there is no tool 'search'; the tools are: lookup, finish"
    assert "not valid JSON" in second
    assert out["answer"] == "ok"


async def test_text_protocol_forced_on_a_tool_capable_lm() -> None:
    lm = ToolCallLM(lambda r: Choice(text=step("t", "finish", {"answer": "a"})))
    agent = ReAct("question -> answer", tools=[lookup], protocol="text")
    with context(lm=lm):
        assert (await agent.forward(question="?"))["answer"] == "a"
    assert lm.requests[0].tools is None


# ---------------------------------------------------------------- the one predictor call path


async def test_native_step_uses_the_demo_selector() -> None:
    lm = ToolCallLM(lambda r: call("finish", {"answer": "1"}))
    agent = ReAct("question -> answer", tools=[lookup], protocol="native")
    demo = {
        "question": "Alan?",
        "trajectory": "(no steps yet)",
        "thought": "chosen by the selector",
        "tool_name": "lookup",
        "tool_args": {"name": "Alan"},
    }
    seen: list[dict[str, Any]] = []

    def select(inputs: dict[str, Any]) -> list[dict[str, Any]]:
        seen.append(inputs)
        return [demo]

    agent.step.demo_selector = select
    with context(lm=lm):
        out = await agent.forward(question="one?")
    assert out["answer"] == "1"
    assert seen[0]["question"] == "one?"
    assert any("chosen by the selector" in str(m["content"]) for m in lm.requests[0].messages)


async def test_native_step_repairs_a_reply_with_neither_call_nor_fields() -> None:
    replies = iter([Choice(text="I am not sure."), call("finish", {"answer": "ok"})])
    lm = ToolCallLM(lambda r: next(replies))
    agent = ReAct("question -> answer", tools=[lookup], protocol="native")
    g = Graph("g").add("agent", agent)
    p = await g.run(question="?", lm=lm)
    assert p["answer"] == "ok"
    assert [s["tool"] for s in p["trajectory"]] == ["finish"]  # no unreadable step
    assert p.trace is not None
    first, repair = p.trace.lm_calls("agent.step")
    assert first.error is not None
    assert first.error.startswith("ParseError")
    assert (repair.attempt, repair.repair) == (1, True)
    assert repair.outputs["tool_name"] == "finish"
    assert lm.requests[1].tools is not None
    assert lm.requests[1].messages[-2] == {"role": "assistant", "content": "I am not sure."}


async def test_native_step_asks_again_when_the_token_limit_cut_the_reply() -> None:
    def script(request: LMRequest) -> Choice:
        if request.max_tokens == 20:
            return Choice(text="<thought>let me thi", finish_reason="length")
        return call("finish", {"answer": "done"})

    lm = ToolCallLM(script)
    agent = ReAct("question -> answer", tools=[lookup], protocol="native")
    agent.step.max_tokens = 20
    g = Graph("g").add("agent", agent)
    p = await g.run(question="?", lm=lm)
    assert p["answer"] == "done"
    assert [r.max_tokens for r in lm.requests] == [20, 40]
    assert p.trace is not None
    cut, longer = p.trace.lm_calls("agent.step")
    assert cut.finish_reason == "length"
    assert "max_tokens=40" in longer.note
