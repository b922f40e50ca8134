"""ProgramOfThought: programs written by the (fake) model run in the real sandbox."""

from __future__ import annotations

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.program_of_thought import ProgramError, ProgramOfThought
from rhizome.tools.agent.sandbox import PythonSandbox

SANDBOX = PythonSandbox(wall_time=10, cpu_time=5)


def role_of(request: LMRequest) -> str:
    user = str(request.messages[-1]["content"])
    if "<previous_code>" in user:
        return "regenerate"
    if "<output>" in user:
        return "answer"
    return "generate"


async def test_program_runs_and_its_output_is_read_directly() -> None:
    lm = FakeLM(["<code>\n```python\nprint(sum(range(1, 101)))\n```\n</code>"])
    node = ProgramOfThought("question -> answer: int", sandbox=SANDBOX)
    g = Graph("g").add("pot", node)
    p = await g.run(question="Sum of 1..100?", lm=lm)
    assert p == {"answer": 5050, "code": "print(sum(range(1, 101)))"}
    assert lm.calls == 1
    assert "prints only the value of answer (int)" in str(lm.requests[0].messages[0]["content"])
    assert p.trace is not None
    assert len(p.trace.lm_calls("pot.generate")) == 1
    assert dict(g.named_predictors()) == {
        "pot.generate": node.generate,
        "pot.regenerate": node.regenerate,
        "pot.answer": node.answer,
    }


async def test_a_failing_program_is_fixed_with_the_error_shown() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        if role_of(request) == "regenerate":
            return "<code>print(len('hello'))</code>"
        return "<code>print(len(hello))</code>"

    lm = FakeLM(reply)
    node = ProgramOfThought("question -> answer: int", sandbox=SANDBOX)
    g = Graph("g").add("pot", node)
    p = await g.run(question="letters in hello?", lm=lm)
    assert p["answer"] == 5
    fix_prompt = str(lm.requests[1].messages[-1]["content"])
    assert "print(len(hello))" in fix_prompt
    assert "NameError: name 'hello' is not defined" in fix_prompt
    assert p.trace is not None
    assert len(p.trace.lm_calls("pot.regenerate")) == 1


async def test_retries_are_bounded_and_the_error_is_typed() -> None:
    lm = FakeLM(["<code>raise SystemExit(3)</code>"])
    g = Graph("g").add("pot", ProgramOfThought("q -> a: int", sandbox=SANDBOX, max_retries=1))
    with pytest.raises(NodeError, match="still failed after 1 retries") as info:
        await g.run(q="x", lm=lm)
    cause = info.value.__cause__
    assert isinstance(cause, ProgramError)
    assert cause.code == "raise SystemExit(3)"
    assert "exit status 3" in cause.error
    assert lm.calls == 2


async def test_printing_nothing_counts_as_a_failure() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        if role_of(request) == "regenerate":
            assert "printed nothing" in str(request.messages[-1]["content"])
            return "<code>print('yes')</code>"
        return "<code>x = 1</code>"

    node = ProgramOfThought("q -> a", sandbox=SANDBOX, lm=FakeLM(reply))
    assert await node.forward(q="?") == {"a": "yes", "code": "print('yes')"}


async def test_output_that_does_not_parse_goes_through_the_answer_predictor() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        if role_of(request) == "answer":
            assert "<output>\nthe total is 12" in str(request.messages[-1]["content"])
            return "<answer>12</answer>"
        return "<code>print('the total is', 3 * 4)</code>"

    node = ProgramOfThought("q -> answer: int", sandbox=SANDBOX, lm=FakeLM(reply))
    assert (await node.forward(q="3*4"))["answer"] == 12


async def test_several_outputs_are_read_from_printed_json() -> None:
    lm = FakeLM(['<code>import json\nprint(json.dumps({"low": 1, "high": 9}))</code>'])
    node = ProgramOfThought("q -> low: int, high: int", sandbox=SANDBOX, lm=lm)
    assert "one JSON object with the keys low, high" in node.generate.instruction
    out = await node.forward(q="range")
    assert (out["low"], out["high"]) == (1, 9)
    assert lm.calls == 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="rename them"):
        ProgramOfThought("code -> answer")
    with pytest.raises(ConfigError, match="max_retries"):
        ProgramOfThought("q -> a", max_retries=-1)
