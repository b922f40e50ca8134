"""Per-node policies: retries, request timeout and cache of a node's LM calls, over the LM's."""

from __future__ import annotations

import time

import pytest

from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.policy import CallPolicy
from rhizome.engine.client.retry import RetryPolicy
from rhizome.engine.errors import ConfigError, LMStatusError, LMTimeoutError, NodeError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from tests.server import OpenAIServer, Reply

ANSWER = '{"answer": "ok"}'


def one_node(**policy: object) -> Graph:
    node = Predict("question -> answer")
    if policy:
        node.with_policy(**policy)  # type: ignore[arg-type]
    return Graph("g").add("a", node)


async def test_a_node_with_one_attempt_fails_fast_while_the_lm_retries(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.script([Reply(status=503, text="busy"), ANSWER])
    assert (await one_node().run(question="q", lm=lm))["answer"] == "ok"
    assert server.request_count == 2  # the LM's own policy retried the 503

    server.reset()
    server.script([Reply(status=503, text="busy"), ANSWER])
    fast = one_node(retry=RetryPolicy(max_retries=0))
    with pytest.raises(NodeError) as caught:
        await fast.run(question="q", lm=lm)
    assert isinstance(caught.value.__cause__, LMStatusError)
    assert caught.value.__cause__.attempts == 1
    assert server.request_count == 1


async def test_retry_on_picks_which_failures_are_retried(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    only_timeouts = RetryPolicy(max_retries=3, backoff=0.01, retry_on={"timeout"})
    server.script([Reply(status=500, text="boom"), ANSWER])
    with pytest.raises(NodeError, match="HTTP 500"):
        await one_node(retry=only_timeouts).run(question="q", lm=lm)
    assert server.request_count == 1
    server.reset()
    server.script([Reply(status=500, text="boom"), ANSWER])
    status_too = RetryPolicy(max_retries=3, backoff=0.01, retry_on={"status"})
    assert (await one_node(retry=status_too).run(question="q", lm=lm))["answer"] == "ok"
    assert server.request_count == 2


async def test_a_node_with_the_cache_off_asks_the_server_again(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    lm = OpenAILM("test-model", base_url=server.url, cache=tmp_cache)
    server.responder = lambda body: ANSWER
    cached, uncached = one_node(), one_node(cache=False)
    for _ in range(2):
        await cached.run(question="q", lm=lm)
    assert server.request_count == 1
    for _ in range(2):
        await uncached.run(question="q", lm=lm)
    assert server.request_count == 3
    refresh = one_node(cache="refresh")
    server.responder = lambda body: '{"answer": "newer"}'
    assert (await refresh.run(question="q", lm=lm))["answer"] == "newer"
    assert (await cached.run(question="q", lm=lm))["answer"] == "newer"  # overwritten
    assert server.request_count == 4
    await lm.aclose()


async def test_a_node_may_use_its_own_cache(
    server: OpenAIServer, tmp_path: object, lm: OpenAILM
) -> None:
    own = ResponseCache(f"{tmp_path}/own.sqlite")
    server.responder = lambda body: ANSWER
    graph = one_node(cache=own)
    await graph.run(question="q", lm=lm)
    await graph.run(question="q", lm=lm)  # the LM has no cache: the node's answers
    assert server.request_count == 1
    assert len(own) == 1
    own.close()


async def test_a_node_timeout_overrides_the_lms(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(text=ANSWER, delay=2.0)])
    graph = one_node(retry=RetryPolicy(max_retries=0), timeout=0.2)
    start = time.perf_counter()
    with pytest.raises(NodeError) as caught:
        await graph.run(question="q", lm=lm)
    assert time.perf_counter() - start < 1.5
    assert isinstance(caught.value.__cause__, LMTimeoutError)
    assert "timeout=0.2" in str(caught.value.__cause__)


async def test_a_graph_policy_holds_inside_and_inner_fields_win(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    inner = Graph("inner").add("a", Predict("question -> answer"))
    outer = Graph("outer").add("sub", inner.with_policy(retry=RetryPolicy(max_retries=0)))
    server.script([Reply(status=503, text="busy"), ANSWER])
    with pytest.raises(NodeError):
        await outer.run(question="q", lm=lm)
    assert server.request_count == 1
    server.reset()
    inner.nodes["a"].with_policy(cache=False)  # sets only the cache: retry still from "sub"
    policy = inner.nodes["a"].policy
    assert policy is not None
    assert policy.retry is None
    server.script([Reply(status=503, text="busy"), ANSWER])
    with pytest.raises(NodeError):
        await outer.run(question="q", lm=lm)
    assert server.request_count == 1


def test_policies_are_checked() -> None:
    with pytest.raises(ConfigError, match="the kinds are: status, connection, timeout, reply"):
        RetryPolicy(retry_on={"5xx"})
    with pytest.raises(ConfigError, match="must be positive seconds"):
        CallPolicy(timeout=0)
    with pytest.raises(ConfigError, match="'refresh'"):
        CallPolicy(cache="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        Predict("q -> a").with_policy(CallPolicy(), cache=False)
    assert RetryPolicy(max_retries=0).attempts == 1
