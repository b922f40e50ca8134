"""Streaming against the test server speaking real server-sent events.

The client reads SSE into the same reply as a whole response; a stream broken
mid-way is retried or reported, never returned truncated; ``graph.events``
yields node, LM-call, retry, tool and token events in order, and the tokens
of each field join into the field's final value.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.call.field_stream import FieldStream
from rhizome.engine.call.signature import Signature
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import LMConnectionError, LMReplyError, NodeError
from rhizome.engine.events import (
    Event,
    LMCallFinished,
    LMCallStarted,
    NodeFinished,
    NodeStarted,
    Retry,
    RunFinished,
    Token,
    ToolCall,
    ToolResult,
)
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.nodes.react import ReAct
from rhizome.tools.agent.tool import tool
from tests.server import OpenAIServer, Reply

ASK = LMRequest(messages=({"role": "user", "content": "hi"},))
STREAMED = LMRequest(messages=({"role": "user", "content": "hi"},), stream=True)


def fields_of(events: list[Event], path: str) -> dict[str, str]:
    """The tokens of ``path`` since its last call start or retry, joined per field."""
    joined: dict[str, str] = {}
    for event in events:
        if event.path != path:
            continue
        if isinstance(event, LMCallStarted | Retry):
            joined = {}
        elif isinstance(event, Token):
            joined[event.field] = joined.get(event.field, "") + event.text
    return joined


async def collect(graph: Graph, lm: OpenAILM, **inputs: Any) -> list[Event]:
    return [event async for event in graph.events(inputs, lm=lm)]


# ---- the client -------------------------------------------------------------------


async def test_a_streamed_reply_equals_the_whole_one(server: OpenAIServer, lm: OpenAILM) -> None:
    text = 'He said "hi" — café 😀\nand left.'
    calls = [{"name": "lookup", "arguments": {"name": "ada", "deep": [1, 2]}}]
    server.script([text, text, Reply(tool_calls=calls), Reply(tool_calls=calls)])
    whole, streamed = await lm.complete(ASK), await lm.complete(STREAMED)
    assert streamed.choices == whole.choices
    assert streamed.usage == whole.usage
    assert streamed.usage.completion_tokens > 0
    assert streamed.model == whole.model == "test-model"
    calls_whole, calls_streamed = await lm.complete(ASK), await lm.complete(STREAMED)
    assert calls_streamed.choices == calls_whole.choices
    assert json.loads(calls_streamed.choices[0].tool_calls[0].arguments)["deep"] == [1, 2]
    sent = server.requests[1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert "stream" not in server.requests[0]


async def test_a_stream_cut_mid_way_is_retried(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(text="the first try breaks", break_after=2), "the second try"])
    reply = await lm.complete(STREAMED)
    assert reply.text == "the second try"
    assert server.request_count == 2
    assert lm.usage.retries == 1


async def test_a_stream_that_ends_early_is_retried(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(text="ends without done", break_after=3, break_how="end"), "whole"])
    assert (await lm.complete(STREAMED)).text == "whole"
    assert server.request_count == 2


@pytest.mark.parametrize(("how", "error"), [("drop", LMConnectionError), ("end", LMReplyError)])
async def test_a_broken_stream_is_reported_never_truncated(
    server: OpenAIServer, how: str, error: type[Exception]
) -> None:
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=1, backoff=0.01)
    broken = Reply(text="a long answer that never finishes", break_after=2, break_how=how)
    server.script([broken, broken])
    with pytest.raises(error, match="stream"):
        await lm.complete(STREAMED)
    assert server.request_count == 2
    await lm.aclose()


async def test_an_error_event_mid_stream_is_retried(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(text="partial reply", break_after=2, break_how="error"), "fine"])
    assert (await lm.complete(STREAMED)).text == "fine"
    assert server.request_count == 2
    once = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    server.script([Reply(text="partial reply", break_after=2, break_how="error")])
    with pytest.raises(LMReplyError, match="error mid-stream: overloaded"):
        await once.complete(STREAMED)
    await once.aclose()


# ---- field tokens -------------------------------------------------------------------

SIG = Signature.coerce("question -> reasoning, answer: str")
TRICKY = {
    "reasoning": 'Quotes "x", a back\\slash, tabs\tand\nnew lines; <b>tags</b> & é 😀 ',
    "answer": "  Paris </answer  maybe",
}


def adder(into: dict[str, str]) -> Callable[[str, str], None]:
    def add(field: str, text: str) -> None:
        into[field] = into.get(field, "") + text

    return add


@pytest.mark.parametrize("adapter", [JSONAdapter(), TextAdapter()], ids=["json", "text"])
def test_field_tokens_join_into_the_parsed_values_however_the_reply_is_cut(
    adapter: JSONAdapter | TextAdapter,
) -> None:
    reply = adapter.format_outputs(SIG, TRICKY)
    if isinstance(adapter, JSONAdapter):
        reply = json.dumps(TRICKY)  # \u escapes for é and the emoji's surrogate pair
    parsed = adapter.parse(SIG, reply)
    rng = random.Random(7)
    for _ in range(200):
        got: dict[str, str] = {}
        stream = FieldStream(
            list(SIG.outputs),
            json=isinstance(adapter, JSONAdapter),
            emit=adder(got),
        )
        cuts = sorted(rng.sample(range(1, len(reply)), rng.randint(1, 40)))
        for start, end in zip([0, *cuts], [*cuts, len(reply)], strict=True):
            stream.feed(reply[start:end])
        assert got == parsed


def test_non_text_fields_stream_their_json() -> None:
    got: dict[str, str] = {}
    stream = FieldStream(["n", "items"], json=True, emit=adder(got))
    stream.feed('{"n": 42 , "items": [1, {"a": "]}"}], "other": "x"}')
    assert got == {"n": "42", "items": '[1, {"a": "]}"}]'}


# ---- graph.events -----------------------------------------------------------------


async def test_events_come_in_order_and_tokens_join_into_the_outputs(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.script([json.dumps({"reasoning": "Paris is the capital.", "answer": "Paris"})])
    graph = Graph("qa").add("think", Predict("question -> reasoning, answer"))
    events = await collect(graph, lm, question="Capital of France?")
    kinds = [type(e) for e in events]
    assert kinds[:2] == [NodeStarted, LMCallStarted]
    assert kinds[-3:] == [LMCallFinished, NodeFinished, RunFinished]
    assert set(kinds[2:-3]) == {Token}
    assert len(kinds) > 10
    started, finished = events[1], events[-3]
    assert isinstance(started, LMCallStarted)
    assert started.streamed
    assert isinstance(finished, LMCallFinished)
    assert finished.completion_tokens > 0
    assert finished.prompt_tokens > 0
    assert finished.error is None
    final = events[-1]
    assert isinstance(final, RunFinished)
    assert (
        fields_of(events, "think")
        == final.outputs
        == {
            "reasoning": "Paris is the capital.",
            "answer": "Paris",
        }
    )
    assert server.requests[0]["stream"] is True


async def test_nested_graph_events_carry_their_path(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: "<answer>\n  deep  \n</answer>"
    inner = Graph("inner").add("a", Predict("question -> answer", adapter=TextAdapter()))
    outer = Graph("outer").add("sub", Graph("mid").add("inner", inner))
    events = await collect(outer, lm, question="q")
    starts = [e.path for e in events if isinstance(e, NodeStarted)]
    ends = [e.path for e in events if isinstance(e, NodeFinished)]
    assert starts == ["sub", "sub.inner", "sub.inner.a"]
    assert ends == ["sub.inner.a", "sub.inner", "sub"]
    assert fields_of(events, "sub.inner.a") == {"answer": "deep"}


async def test_a_retried_stream_restarts_the_tokens(server: OpenAIServer, lm: OpenAILM) -> None:
    reply = json.dumps({"answer": "a complete answer"})
    server.script([Reply(text=reply, break_after=7), reply])
    events = await collect(Graph("g").add("a", Predict("question -> answer")), lm, question="q")
    retries = [e for e in events if isinstance(e, Retry)]
    assert len(retries) == 1
    assert retries[0].path == "a"
    assert "broke off" in retries[0].reason
    before = [e for e in events[: events.index(retries[0])] if isinstance(e, Token)]
    assert before
    assert "".join(t.text for t in before) != "a complete answer"
    assert fields_of(events, "a") == {"answer": "a complete answer"}


async def test_a_cached_reply_still_gives_its_tokens(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    lm = OpenAILM("test-model", base_url=server.url, cache=tmp_cache)
    server.responder = lambda body: '{"answer": "from the cache"}'
    graph = Graph("g").add("a", Predict("question -> answer"))
    await graph.run(question="q", lm=lm)
    events = await collect(graph, lm, question="q")
    assert server.request_count == 1
    finished = next(e for e in events if isinstance(e, LMCallFinished))
    assert finished.cached
    assert fields_of(events, "a") == {"answer": "from the cache"}
    await lm.aclose()


async def test_agent_tool_calls_are_events(server: OpenAIServer, lm: OpenAILM) -> None:
    @tool
    def age(name: str) -> str:
        """A person's age.

        Args:
            name: Who.
        """
        return "36"

    steps = [
        Reply(tool_calls=[{"name": "age", "arguments": {"name": "Ada"}}]),
        Reply(tool_calls=[{"name": "finish", "arguments": {"answer": "36"}}]),
    ]
    server.script(steps)
    graph = Graph("g").add("agent", ReAct("question -> answer", tools=[age]))
    events = await collect(graph, lm, question="How old is Ada?")
    calls = [e for e in events if isinstance(e, ToolCall | ToolResult)]
    assert [type(e) for e in calls] == [ToolCall, ToolResult]
    assert calls[0].path == "agent"
    assert calls[0].tool == "age"
    assert calls[0].args == {"name": "Ada"}
    assert isinstance(calls[1], ToolResult)
    assert calls[1].observation == "36"
    assert events[-1].outputs["answer"] == "36"  # type: ignore[attr-defined]


async def test_a_failed_run_raises_after_its_events(server: OpenAIServer) -> None:
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    server.script([Reply(status=401, text="bad key")])
    seen: list[Event] = []

    async def consume() -> None:
        async for event in Graph("g").add("a", Predict("q -> a")).events(q="x", lm=lm):
            seen.append(event)

    with pytest.raises(NodeError, match="HTTP 401"):
        await consume()
    assert [type(e) for e in seen] == [NodeStarted, LMCallStarted, LMCallFinished, NodeFinished]
    assert isinstance(seen[-1], NodeFinished)
    assert seen[-1].error
    await lm.aclose()


async def test_leaving_early_stops_the_run(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(text='{"answer": "slow"}', delay=5)])
    stream = Graph("g").add("a", Predict("question -> answer")).events(question="q", lm=lm)
    async with stream:
        async for event in stream:
            if isinstance(event, LMCallStarted):
                break
    assert server.request_count <= 1
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


# Building the httpx transport (its SSL context) runs a full garbage collection; on a
# loaded CI machine that finalized a socket some earlier test left unclosed (never
# reproduced locally in 50 runs; see the closing note of 2026-12-02). The leak is not
# this test's: its own transport and client are closed below.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_streaming_through_an_httpx_transport(server: OpenAIServer) -> None:
    """A client given ``transport=`` (or behind a proxy) sends through httpx; it streams too."""
    transport = httpx.AsyncHTTPTransport()
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01, transport=transport)
    server.script(["through httpx", Reply(text="broken", break_after=1), "again"])
    pieces: list[str] = []
    graph = Graph("g").add("a", Predict("question -> answer", adapter=TextAdapter()))
    reply = await lm.complete(STREAMED)
    assert reply.text == "through httpx"
    assert (await lm.complete(STREAMED)).text == "again"
    assert server.request_count == 3
    server.responder = lambda body: "<answer>via httpx</answer>"
    async for event in graph.events(question="q", lm=lm):
        if isinstance(event, Token):
            pieces.append(event.text)
    assert "".join(pieces) == "via httpx"
    assert len(pieces) > 1  # it arrived in pieces
    await lm.aclose()
    await transport.aclose()


async def test_a_server_that_ignores_stream_still_gives_the_tokens(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    whole = {
        "model": "test-model",
        "choices": [{"index": 0, "message": {"content": '{"answer": "whole"}'}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    server.script([Reply(raw_body=json.dumps(whole))])  # JSON, not server-sent events
    events = await collect(Graph("g").add("a", Predict("question -> answer")), lm, question="q")
    assert server.requests[0]["stream"] is True
    assert fields_of(events, "a") == {"answer": "whole"}
    finished = next(e for e in events if isinstance(e, LMCallFinished))
    assert finished.completion_tokens == 2
