"""BestOfN and Refine: sampling, rewards, runtime checks with feedback."""

from __future__ import annotations

from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.context import context, settings
from rhizome.engine.errors import ConfigError, NodeError, ParseError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.nodes.sampling import BestOfN, Refine, RefineError


def by_sample(replies: list[str]) -> FakeLM:
    """An LM whose reply depends only on the sample index (as a real cache would key it)."""
    return FakeLM(lambda request, sample: replies[sample % len(replies)])


def longest(inputs: dict[str, Any], outputs: dict[str, Any]) -> float:
    return float(len(outputs["answer"]))


# ---------------------------------------------------------------- BestOfN


async def test_best_of_n_signature_samples_n_in_one_request() -> None:
    lm = by_sample(["<answer>a</answer>", "<answer>abc</answer>", "<answer>ab</answer>"])
    node = BestOfN("question -> answer", n=3, reward_fn=longest)
    g = Graph("g").add("best", node)
    p = await g.run(question="q", lm=lm)
    assert p == {"answer": "abc"}
    assert lm.calls == 1
    assert lm.requests[0].n == 3
    assert p.trace is not None
    assert len(p.trace.lm_calls("best")) == 1
    assert dict(g.named_predictors()) == {"best": node.predictor}


async def test_best_of_n_threshold_stops_early_with_fresh_samples() -> None:
    lm = by_sample(["<answer>a</answer>", "<answer>abcd</answer>", "<answer>abcdefgh</answer>"])
    node = BestOfN("question -> answer", n=3, reward_fn=longest, threshold=3)
    with context(lm=lm):
        assert await node.forward(question="q") == {"answer": "abcd"}
    assert lm.calls == 2  # stopped after the second attempt reached the threshold
    assert all(r.n == 1 for r in lm.requests)


async def test_best_of_n_wraps_a_node_and_keeps_its_roles() -> None:
    inner = ChainOfThought("question -> answer")
    replies = [
        "<reasoning>r0</reasoning><answer>x</answer>",
        "<reasoning>r1</reasoning><answer>xyz</answer>",
    ]
    node = BestOfN(inner, n=2, reward_fn=longest)
    assert list(node.outputs) == ["reasoning", "answer"]
    assert list(node.named_predictors()) == [("", inner.predictor)]
    g = Graph("g").add("best", node)
    p = await g.run(question="q", lm=by_sample(replies))
    assert p == {"reasoning": "r1", "answer": "xyz"}
    assert p.trace is not None
    (one,) = p.trace.lm_calls("best")  # a Predict node's samples come in one request
    assert one.outputs["answer"] == "x"


async def test_best_of_n_runs_other_nodes_n_times_with_fresh_sample_indices() -> None:
    seen: list[int] = []

    def attempt(question: str) -> str:
        seen.append(settings().sample)
        return "a" * len(seen)

    node = BestOfN(FunctionNode(attempt, outputs=["answer"]), n=3, reward_fn=longest)
    assert await node.forward(question="q") == {"answer": "aaa"}
    assert len(set(seen)) == 3


async def test_best_of_n_async_reward_and_skips_failed_attempts() -> None:
    lm = by_sample(["not a reply", "<answer>ok</answer>"])

    async def reward(inputs: dict[str, Any], outputs: dict[str, Any]) -> float:
        assert inputs == {"question": "q"}
        return 1.0

    node = BestOfN(Predict("question -> answer"), n=2, reward_fn=reward)
    with context(lm=lm):
        assert await node.forward(question="q") == {"answer": "ok"}


async def test_best_of_n_raises_the_last_error_when_all_attempts_fail() -> None:
    def broken(question: str) -> str:
        raise ValueError("no luck")

    node = BestOfN(FunctionNode(broken, outputs=["answer"]), n=2, reward_fn=longest)
    with pytest.raises(RuntimeError, match="all 2 attempts failed; the last error: no luck"):
        await node.forward(question="q")
    sampled = BestOfN(Predict("question -> answer"), n=2, reward_fn=longest)
    with context(lm=FakeLM(["garbage"])), pytest.raises(ParseError):
        await sampled.forward(question="q")


async def test_best_of_n_reward_must_be_a_number() -> None:
    node = BestOfN("question -> answer", n=1, reward_fn=lambda i, o: "high")  # type: ignore[arg-type,return-value]
    with context(lm=FakeLM(["<answer>a</answer>"])), pytest.raises(TypeError, match="number"):
        await node.forward(question="q")


def test_best_of_n_config_errors() -> None:
    with pytest.raises(ConfigError, match="n >= 1"):
        BestOfN("q -> a", n=0, reward_fn=longest)
    with pytest.raises(ConfigError, match="wraps a signature or a node"):
        BestOfN(42, n=2, reward_fn=longest)  # type: ignore[arg-type]


def test_best_of_n_copy_is_independent() -> None:
    node = BestOfN(Predict("question -> answer"), n=2, reward_fn=longest)
    twin = node.copy()
    assert twin.node is not node.node
    assert twin.node is not None
    assert isinstance(twin.node, Predict)
    twin.node.predictor.instruction = "changed"
    assert isinstance(node.node, Predict)
    assert node.node.predictor.instruction != "changed"


# ---------------------------------------------------------------- Refine


def short_answer(inputs: dict[str, Any], outputs: dict[str, Any]) -> str | None:
    words = len(outputs["answer"].split())
    return None if words <= 2 else f"the answer has {words} words; use at most 2"


async def test_refine_retries_with_the_previous_attempt_and_feedback() -> None:
    seen: list[LMRequest] = []

    def reply(request: LMRequest, sample: int) -> str:
        seen.append(request)
        last = str(request.messages[-1]["content"])
        return "<answer>Paris</answer>" if "<feedback>" in last else "<answer>It is Paris</answer>"

    node = Refine("question -> answer", short_answer, max_attempts=3)
    node.predictor.demos = [{"question": "capital of Italy?", "answer": "Rome"}]  # type: ignore[union-attr]
    g = Graph("g").add("refine", node)
    p = await g.run(question="capital of France?", lm=FakeLM(reply))
    assert p == {"answer": "Paris"}
    first, second = (str(r.messages[-1]["content"]) for r in seen)
    assert "<feedback>" not in first
    assert "<previous_attempt>" not in first
    assert "answer: It is Paris" in second
    assert "the answer has 3 words; use at most 2" in second
    # the retry keeps the tuned demos and logs under the predictor's own path
    assert any("Rome" in str(m["content"]) for m in seen[1].messages)
    assert p.trace is not None
    calls = p.trace.lm_calls("refine")
    assert len(calls) == 2
    assert calls[1].inputs["feedback"].startswith("the answer has 3")


async def test_refine_strict_raises_naming_the_check() -> None:
    lm = FakeLM(["<answer>far too many words</answer>"])
    g = Graph("g").add("refine", Refine("question -> answer", short_answer, max_attempts=2))
    with pytest.raises(RefineError, match="check 'short_answer' still failed after 2") as info:
        await g.run(question="q", lm=lm)
    assert isinstance(info.value, NodeError)
    assert info.value.node == "refine"
    assert info.value.check == "short_answer"
    assert info.value.outputs == {"answer": "far too many words"}
    assert lm.calls == 2


async def test_refine_not_strict_returns_the_last_attempt() -> None:
    lm = by_sample(["<answer>one two three</answer>", "<answer>four five six</answer>"])
    node = Refine("question -> answer", short_answer, max_attempts=2, strict=False)
    with context(lm=lm):
        assert await node.forward(question="q") == {"answer": "four five six"}


async def test_refine_check_forms_false_raise_and_several_checks() -> None:
    calls: list[str] = []

    def nonempty(i: dict[str, Any], o: dict[str, Any]) -> bool:
        calls.append("nonempty")
        return bool(o["answer"].strip())

    def no_digits(i: dict[str, Any], o: dict[str, Any]) -> None:
        calls.append("no_digits")
        if any(c.isdigit() for c in o["answer"]):
            raise ValueError("digits are not allowed")

    lm = FakeLM(["<answer>route 66</answer>", "<answer>the mother road</answer>"])
    node = Refine("question -> answer", [nonempty, no_digits], max_attempts=3)
    with context(lm=lm):
        assert await node.forward(question="q") == {"answer": "the mother road"}
    assert "ValueError: digits are not allowed" in str(lm.requests[1].messages[-1]["content"])
    assert calls == ["nonempty", "no_digits", "nonempty", "no_digits"]
    false_only = Refine("question -> answer", lambda i, o: False, max_attempts=1)
    with context(lm=FakeLM(["<answer>a</answer>"])), pytest.raises(RefineError, match="failed"):
        await false_only.forward(question="q")


async def test_refine_wraps_a_predict_node_and_feeds_back_into_its_predictor() -> None:
    inner = ChainOfThought("question -> answer: int")

    def even(i: dict[str, Any], o: dict[str, Any]) -> str | None:
        return None if o["answer"] % 2 == 0 else "the answer must be even"

    def reply(request: LMRequest, sample: int) -> str:
        retry = "<feedback>" in str(request.messages[-1]["content"])
        return f"<reasoning>r</reasoning><answer>{4 if retry else 3}</answer>"

    node = Refine(inner, even)
    g = Graph("g").add("solve", node)
    p = await g.run(question="q", lm=FakeLM(reply))
    assert p == {"reasoning": "r", "answer": 4}
    assert dict(g.named_predictors()) == {"solve": inner.predictor}
    # the wrapped node itself is untouched by the retry
    assert "feedback" not in inner.predictor.signature.inputs


async def test_refine_async_check() -> None:
    async def check(i: dict[str, Any], o: dict[str, Any]) -> str | None:
        return None

    node = Refine("question -> answer", check)
    with context(lm=FakeLM(["<answer>a</answer>"])):
        assert await node.forward(question="q") == {"answer": "a"}


async def test_refine_parse_failure_propagates() -> None:
    node = Refine("question -> answer", short_answer)
    with context(lm=FakeLM(["no tags"])), pytest.raises(ParseError):
        await node.forward(question="q")


def test_refine_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_attempts >= 1"):
        Refine("q -> a", short_answer, max_attempts=0)
    with pytest.raises(ConfigError, match="already has field"):
        Refine("question, feedback -> answer", short_answer)
    with pytest.raises(ConfigError, match="check"):
        Refine("q -> a", [])


async def test_refine_inside_a_graph_with_a_function_node_target() -> None:
    counter = {"n": 0}

    def flaky(question: str) -> str:
        counter["n"] += 1
        return "bad" if counter["n"] == 1 else "good"

    node = Refine(
        FunctionNode(flaky, outputs=["answer"]),
        lambda i, o: None if o["answer"] == "good" else "not good",
    )
    g = Graph("g").add("r", node)
    assert await g.run(question="q") == {"answer": "good"}
    assert counter["n"] == 2
