"""Issue 15: FakeLM keeps usage totals the way OpenAILM does."""

from __future__ import annotations

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.client.usage import UsageTracker


def ask(text: str, n: int = 1) -> LMRequest:
    return LMRequest(messages=({"role": "user", "content": text},), n=n)


async def test_each_call_updates_usage() -> None:
    lm = FakeLM(["two words", "three more words"])
    assert isinstance(lm.usage, UsageTracker)
    await lm.complete(ask("one two three"))
    await lm.complete(ask("four", n=2))
    usage = lm.usage.snapshot()
    assert usage["calls"] == 2 == lm.calls
    assert usage["prompt_tokens"] == 3 + 1
    assert usage["completion_tokens"] == 2 + (3 + 2)  # the second call takes two replies
    assert (usage["errors"], usage["cache_hits"], usage["cost"]) == (0, 0, 0.0)


async def test_a_failing_responder_counts_as_an_error() -> None:
    def broken(request: LMRequest, sample: int) -> str:
        raise RuntimeError("scripted failure")

    lm = FakeLM(broken)
    with pytest.raises(RuntimeError, match="scripted failure"):
        await lm.complete(ask("x"))
    assert (lm.usage.calls, lm.usage.errors, lm.usage.completion_tokens) == (1, 1, 0)
