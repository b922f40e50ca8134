"""Running a predictor: LM call, parsing, the repair attempt, sampling, trace logging."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.run import run_predictor
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import Capabilities, LMRequest
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError, LMStatusError, ParseError, SignatureError
from rhizome.engine.trace import NodeRecord, Trace, node_record, recording

SIG = "question -> answer: int"


def good(n: int) -> str:
    return f"<answer>{n}</answer>"


async def test_call_returns_typed_outputs_with_request_settings() -> None:
    lm = FakeLM([good(42)])
    p = Predictor(SIG, lm=lm, temperature=0.3, max_tokens=50)
    assert await p(question="6*7?") == {"answer": 42}
    request = lm.requests[0]
    assert request.temperature == 0.3
    assert request.max_tokens == 50
    assert request.n == 1
    assert request.response_format is None
    assert "6*7?" in request.messages[-1]["content"]


async def test_lm_comes_from_context_and_sample_index_is_passed() -> None:
    seen: list[int] = []

    def reply(request: LMRequest, sample: int) -> str:
        seen.append(sample)
        return good(1)

    p = Predictor(SIG)
    with context(lm=FakeLM(reply), sample=3):
        await p(question="q")
    assert seen == [3]


async def test_no_lm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no LM"):
        await Predictor(SIG)(question="q")


async def test_missing_input_names_it_and_lists_inputs() -> None:
    p = Predictor("context, question -> answer", lm=FakeLM(["x"]))
    with pytest.raises(
        SignatureError, match="missing input 'question'; its inputs are: context, question"
    ):
        await p(context="c")


async def test_repair_succeeds_and_says_what_was_wrong() -> None:
    lm = FakeLM(["<answer>forty-two</answer>", good(42)])
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="solve", kind="Predict")):
        result = await Predictor(SIG, lm=lm)(question="q")
    assert result == {"answer": 42}
    repair = lm.requests[1]
    assert repair.messages[:-2] == lm.requests[0].messages
    assert repair.messages[-2] == {"role": "assistant", "content": "<answer>forty-two</answer>"}
    fix = repair.messages[-1]["content"]
    assert "field 'answer': expected an integer, got 'forty-two'" in fix
    assert "<answer>\n{an integer}\n</answer>" in fix
    first, second = trace.lm_calls("solve")
    assert (first.attempt, second.attempt) == (0, 1)
    assert first.error is not None
    assert "forty-two" in first.error
    assert first.outputs == {}
    assert second.error is None
    assert second.outputs == {"answer": 42}


async def test_fails_after_one_repair_with_the_raw_reply() -> None:
    lm = FakeLM(["<answer>many</answer>", "<answer>lots</answer>", good(1)])
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="solve", kind="Predict")):
        with pytest.raises(ParseError, match="even after a repair attempt") as info:
            await Predictor(SIG, lm=lm)(question="q")
    assert info.value.raw == "<answer>lots</answer>"
    assert info.value.field == "answer"
    assert lm.calls == 2
    assert [c.attempt for c in trace.lm_calls()] == [0, 1]
    assert all(c.error for c in trace.lm_calls())


async def test_n_samples_keep_only_those_that_parse() -> None:
    lm = FakeLM([good(1), "nonsense", good(3)])
    out = await Predictor(SIG, lm=lm).sample({"question": "q"}, n=3)
    assert out == [{"answer": 1}, {"answer": 3}]
    assert lm.calls == 1
    assert lm.requests[0].n == 3


async def test_n_samples_none_parse_repairs_once_then_fails() -> None:
    lm = FakeLM(["bad"] * 3 + [good(9)])
    out = await Predictor(SIG, lm=lm).sample({"question": "q"}, n=3)
    assert out == [{"answer": 9}]
    assert lm.requests[1].n == 1
    lm = FakeLM(["bad"])
    with pytest.raises(ParseError):
        await Predictor(SIG, lm=lm).sample({"question": "q"}, n=2)


async def test_n_samples_without_server_support_are_separate_requests() -> None:
    def reply(request: LMRequest, sample: int) -> str:
        return good(sample)

    lm = FakeLM(reply, capabilities=Capabilities(n=False))
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="x", kind="Predict")), context(sample=1):
        out = await Predictor(SIG, lm=lm).sample({"question": "q"}, n=3)
    assert sorted(o["answer"] for o in out) == [3, 4, 5]
    assert [r.n for r in lm.requests] == [1, 1, 1]
    assert len(trace.lm_calls("x")) == 3


async def test_lm_call_lands_in_the_trace() -> None:
    lm = FakeLM([good(5)])
    trace = Trace()
    p = Predictor(SIG, role="step", lm=lm)
    with recording(trace), node_record(NodeRecord(node="x", kind="Predict")):
        await p(question="2+3?")
    (call,) = trace.node("x").calls
    assert call.predictor == "x.step"
    assert call.inputs == {"question": "2+3?"}
    assert call.outputs == {"answer": 5}
    assert call.reply == good(5)
    assert call.messages[0]["role"] == "system"
    assert call.usage.completion_tokens == 1
    assert call.attempt == 0
    assert call.error is None
    assert json.loads(trace.to_json())["usage"]["calls"] == 1


async def test_lm_errors_are_logged_and_raised() -> None:
    class Broken(FakeLM):
        async def complete(self, request: LMRequest, *, sample: int = 0) -> Any:
            raise LMStatusError("server said no", status=400)

    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="x", kind="Predict")):
        with pytest.raises(LMStatusError):
            await Predictor(SIG, lm=Broken(["x"]))(question="q")
    (call,) = trace.lm_calls()
    assert call.error == "LMStatusError: server said no"
    assert call.outputs == {}


async def test_json_adapter_sends_schema_only_when_supported() -> None:
    reply = '{"answer": 7}'
    capable = FakeLM([reply], capabilities=Capabilities(json_schema=True))
    assert await Predictor(SIG, lm=capable)(question="q") == {"answer": 7}
    rf = capable.requests[0].response_format
    assert rf is not None
    assert rf["json_schema"]["schema"]["required"] == ["answer"]

    plain = FakeLM([reply])
    assert await Predictor(SIG, lm=plain, adapter=JSONAdapter())(question="q") == {"answer": 7}
    assert plain.requests[0].response_format is None


async def test_forced_text_adapter_on_a_schema_capable_lm() -> None:
    lm = FakeLM([good(2)], capabilities=Capabilities(json_schema=True))
    assert await Predictor(SIG, lm=lm, adapter=TextAdapter())(question="q") == {"answer": 2}
    assert lm.requests[0].response_format is None


async def test_run_predictor_rejects_bad_n() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await run_predictor(Predictor(SIG, lm=FakeLM(["x"])), {"question": "q"}, n=0)
