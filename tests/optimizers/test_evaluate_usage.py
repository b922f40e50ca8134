"""Issue 15: an evaluation's usage counts the judge's calls and keeps cache hits apart."""

from __future__ import annotations

from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.example import Example
from rhizome.examples import build
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.judge import llm_judge
from rhizome.optimizers.metrics import exact_match
from tests.server import OpenAIServer

DEVSET = [
    Example(question=f"Capital number {i}?", answer="Paris").with_inputs("question")
    for i in range(3)
]


def grader(request: LMRequest, sample: int) -> str:
    return "<rationale>\nsame city\n</rationale>\n<verdict>\ntrue\n</verdict>"


async def test_a_cached_evaluation_reports_cache_hits_not_calls(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    lm = OpenAILM("test-model", base_url=server.url, cache=tmp_cache)
    first = await Evaluate(build(), DEVSET, exact_match(), lm=lm, progress=False)
    again = await Evaluate(build(), DEVSET, exact_match(), lm=lm, progress=False)
    await lm.aclose()
    assert server.request_count == 3
    assert (first.usage["calls"], first.usage["cache_hits"]) == (3, 0)
    assert (again.usage["calls"], again.usage["cache_hits"]) == (0, 3)
    assert again.usage["prompt_tokens"] == first.usage["prompt_tokens"] > 0
    assert "0 LM calls (+3 from the cache)" in again.format()


async def test_the_judges_own_calls_are_counted(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    judge_lm = FakeLM(grader)
    judge = llm_judge("names the same city", lm=judge_lm, samples=2)
    result = await Evaluate(build(), DEVSET, judge, lm=lm, progress=False)
    assert result.score == 1.0
    assert server.request_count == 3
    assert judge_lm.calls == 6
    assert result.usage["calls"] == 3 + 6
    assert result.usage["metric_calls"] == 6
    assert result.usage["cache_hits"] == 0
    assert all(len(r.metric_traces) == 2 for r in result.results)
    program_tokens = sum(r.trace.usage()["prompt_tokens"] for r in result.results if r.trace)
    assert result.usage["prompt_tokens"] > program_tokens


async def test_a_failing_judge_still_counts_its_calls(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    judge_lm = FakeLM(["no verdict here"])
    result = await Evaluate(
        build(), DEVSET, llm_judge("same city", lm=judge_lm), lm=lm, progress=False
    )
    assert result.failures == 3
    assert judge_lm.calls >= 6  # one request and a repair attempt each, at least
    assert result.usage["metric_calls"] == judge_lm.calls
    assert result.usage["calls"] == 3 + judge_lm.calls
