"""OpenAILM against the real OpenAI-compatible test server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import email.utils
import json
import socket
import time
from typing import Any

import anyio
import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LM, LMRequest
from rhizome.engine.client.usage import Prices
from rhizome.engine.client.wire_format import ChatRequest
from rhizome.engine.errors import (
    ConfigError,
    LMConnectionError,
    LMReplyError,
    LMStatusError,
    LMTimeoutError,
)
from tests.server import OpenAIServer, Reply


def ask(text: str = "hello there", **options: Any) -> LMRequest:
    return LMRequest(messages=({"role": "user", "content": text},), **options)


def make_lm(server: OpenAIServer, **options: Any) -> OpenAILM:
    options = {"cache": None, "backoff": 0.01, **options}
    return OpenAILM("test-model", base_url=server.url, **options)


async def test_basic_completion(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: "hi back"
    response = await lm.complete(ask("one two three"))
    assert isinstance(lm, LM)
    assert response.text == "hi back"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 2)
    assert response.model == "test-model"
    assert not response.cached
    assert response.latency > 0
    body = ChatRequest.model_validate(server.requests[0])
    assert body.model == "test-model"
    assert body.messages == [{"role": "user", "content": "one two three"}]
    assert body.n is None
    assert body.temperature is None


async def test_options_and_client_defaults_are_sent(server: OpenAIServer) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {}}}
    tools = ({"type": "function", "function": {"name": "search", "parameters": {}}},)
    lm = make_lm(server, temperature=0.3, max_tokens=50)
    await lm.complete(ask())
    await lm.complete(
        ask(
            temperature=0.9,
            max_tokens=7,
            response_format=schema,
            tools=tools,
            tool_choice="auto",
            stop=("END",),
            seed=11,
        )
    )
    await lm.aclose()
    first, second = (ChatRequest.model_validate(body) for body in server.requests)
    assert (first.temperature, first.max_tokens) == (0.3, 50)
    assert (second.temperature, second.max_tokens, second.seed) == (0.9, 7, 11)
    assert second.response_format == schema
    assert second.tools == list(tools)
    assert (second.tool_choice, second.stop) == ("auto", ["END"])


async def test_n_samples_in_one_request(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: f"sample {body['_choice_index']}"
    response = await lm.complete(ask(n=3))
    assert [c.text for c in response.choices] == ["sample 0", "sample 1", "sample 2"]
    assert server.request_count == 1
    assert server.requests[0]["n"] == 3


async def test_tool_calls_are_parsed(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(tool_calls=[{"name": "search", "arguments": {"q": "paris"}}])])
    response = await lm.complete(ask())
    (choice,) = response.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.text == ""
    (call,) = choice.tool_calls
    assert call.name == "search"
    assert json.loads(call.arguments) == {"q": "paris"}
    assert call.id


@pytest.mark.parametrize(
    "failure",
    [
        Reply(status=429, headers={"Retry-After": "0"}),
        Reply(status=500),
        Reply(status=503),
        Reply(status=408),
        Reply(drop=True),
        Reply(raw_body='{"choices": [{"message": {"content": "trunc'),
        Reply(raw_body='{"choices": []}'),
        Reply(raw_body="<html>gateway</html>"),
    ],
    ids=["429", "500", "503", "408", "dropped", "truncated", "no-choices", "html"],
)
async def test_retries_then_succeeds(server: OpenAIServer, lm: OpenAILM, failure: Reply) -> None:
    server.script([failure, "recovered"])
    response = await lm.complete(ask())
    assert response.text == "recovered"
    assert server.request_count == 2
    usage = lm.usage.snapshot()
    assert (usage["calls"], usage["retries"], usage["errors"]) == (2, 1, 0)


async def test_retry_after_seconds_is_honoured(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script([Reply(status=429, headers={"Retry-After": "0.3"})])
    start = time.perf_counter()
    await lm.complete(ask())
    assert 0.3 <= time.perf_counter() - start < 3


async def test_retry_after_http_date_is_parsed_and_capped(server: OpenAIServer) -> None:
    lm = make_lm(server, backoff=0.0, max_wait=0.3)
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    server.script([Reply(status=503, headers={"Retry-After": later})])
    start = time.perf_counter()
    await lm.complete(ask())
    await lm.aclose()
    assert 0.29 <= time.perf_counter() - start < 3  # waited max_wait, not an hour or 0


@pytest.mark.parametrize(
    ("failure", "error_type"),
    [
        (Reply(status=503, text="overloaded"), LMStatusError),
        (Reply(drop=True), LMConnectionError),
        (Reply(raw_body="{not json"), LMReplyError),
    ],
    ids=["status", "connection", "reply"],
)
async def test_gives_up_after_max_retries(
    server: OpenAIServer, failure: Reply, error_type: type[Exception]
) -> None:
    lm = make_lm(server, max_retries=2)
    server.responder = lambda body: failure
    with pytest.raises(error_type, match="gave up after 3 attempts") as caught:
        await lm.complete(ask())
    await lm.aclose()
    assert server.request_count == 3
    assert getattr(caught.value, "attempts", None) == 3
    usage = lm.usage.snapshot()
    assert (usage["calls"], usage["retries"], usage["errors"]) == (3, 2, 1)


async def test_status_error_carries_status_and_body(server: OpenAIServer) -> None:
    lm = make_lm(server, max_retries=1)
    server.responder = lambda body: Reply(status=503, text="overloaded")
    with pytest.raises(LMStatusError) as caught:
        await lm.complete(ask())
    await lm.aclose()
    assert caught.value.status == 503
    assert "overloaded" in caught.value.body
    assert "overloaded" in str(caught.value)


@pytest.mark.parametrize("status", [400, 403, 404, 418, 422])
async def test_client_errors_are_not_retried(
    server: OpenAIServer, lm: OpenAILM, status: int
) -> None:
    server.responder = lambda body: Reply(status=status, text="unknown parameter 'foo'")
    with pytest.raises(LMStatusError) as caught:
        await lm.complete(ask())
    assert server.request_count == 1
    assert caught.value.status == status
    assert caught.value.attempts == 1
    assert "unknown parameter 'foo'" in str(caught.value)


async def test_404_message_points_at_base_url_and_model(server: OpenAIServer) -> None:
    lm = make_lm(server)
    server.responder = lambda body: Reply(status=404, text="model not found")
    with pytest.raises(LMStatusError, match="base_url"):
        await lm.complete(ask())
    await lm.aclose()


async def test_api_key_is_sent_but_never_shown(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv("RHIZOME_TEST_KEY", secret)
    lm = make_lm(server, api_key_env="RHIZOME_TEST_KEY")
    await lm.complete(ask())
    server.responder = lambda body: Reply(status=401, text=f"Incorrect API key: {secret}")
    with pytest.raises(LMStatusError) as caught:
        await lm.complete(ask())
    await lm.aclose()
    assert server.request_headers[0]["authorization"] == f"Bearer {secret}"
    message = str(caught.value)
    assert "RHIZOME_TEST_KEY" in message
    shown = [message, caught.value.body, repr(lm), repr(lm.usage)]
    shown += [entry.format() + repr(entry) for entry in lm.inspect_history(10)]
    assert all(secret not in text for text in shown)


async def test_no_api_key_sends_no_authorization(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RHIZOME_ABSENT_KEY", raising=False)
    lm = make_lm(server, api_key_env="RHIZOME_ABSENT_KEY")
    await lm.complete(ask())
    await lm.aclose()
    assert "authorization" not in server.request_headers[0]


async def test_timeout_raises_lm_timeout_error(server: OpenAIServer) -> None:
    lm = make_lm(server, timeout=0.1, max_retries=1)
    server.responder = lambda body: Reply(text="late", delay=1.0)
    start = time.perf_counter()
    with pytest.raises(LMTimeoutError) as caught:
        await lm.complete(ask())
    await lm.aclose()
    assert caught.value.attempts == 2
    assert server.request_count == 2
    assert time.perf_counter() - start < 0.9
    assert isinstance(caught.value, TimeoutError)


async def test_concurrency_cap_holds(server: OpenAIServer) -> None:
    lm = make_lm(server, max_concurrency=4)
    server.responder = lambda body: Reply(text="x", delay=0.05)
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(lm.complete, ask())
    await lm.aclose()
    assert server.request_count == 20
    assert server.max_in_flight == 4


async def test_many_concurrent_calls(server: OpenAIServer) -> None:
    lm = make_lm(server, max_concurrency=256)
    server.responder = lambda body: Reply(text=body["messages"][0]["content"], delay=0.05)
    results = await asyncio.gather(*(lm.complete(ask(f"q{i}")) for i in range(600)))
    await lm.aclose()
    assert [r.text for r in results] == [f"q{i}" for i in range(600)]
    assert 64 < server.max_in_flight <= 256


async def test_cancellation_is_not_swallowed(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: Reply(text="slow", delay=2.0)
    start = time.perf_counter()
    with anyio.move_on_after(0.1) as scope:
        await lm.complete(ask())
    assert scope.cancelled_caught
    assert time.perf_counter() - start < 1.5
    assert lm.usage.snapshot()["errors"] == 0


async def test_usage_matches_server_and_prices_give_cost(server: OpenAIServer) -> None:
    lm = make_lm(server, prices=Prices(prompt_per_million=1.0, completion_per_million=2.0))
    server.script([Reply(status=500), "a b c", "d"])
    first = await lm.complete(ask("one two"))
    second = await lm.complete(ask("three"))
    await lm.aclose()
    usage = lm.usage.snapshot()
    assert usage["calls"] == server.request_count == 3
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 4)
    assert first.cost == pytest.approx((2 + 2 * 3) / 1e6)
    assert usage["cost"] == pytest.approx(first.cost + second.cost)
    lm.usage.reset()
    assert set(lm.usage.snapshot().values()) == {0}


async def test_inspect_history_keeps_calls_and_errors(server: OpenAIServer) -> None:
    lm = make_lm(server, max_retries=0)
    server.script(["first", "second", Reply(status=400, text="bad request")])
    await lm.complete(ask("one"))
    await lm.complete(ask("two"))
    with pytest.raises(LMStatusError):
        await lm.complete(ask("three"))
    await lm.aclose()
    entries = lm.inspect_history(2)
    assert [e.request.messages[0]["content"] for e in entries] == ["two", "three"]
    assert entries[0].response is not None
    assert entries[0].response.text == "second"
    assert entries[1].response is None
    assert "bad request" in (entries[1].error or "")
    assert "second" in entries[0].format()
    assert len(lm.inspect_history(100)) == 3


def test_usable_from_successive_event_loops(server: OpenAIServer) -> None:
    lm = make_lm(server)
    first = asyncio.run(lm.complete(ask()))
    second = anyio.run(lm.complete, ask())
    third = asyncio.run(lm.complete(ask()))
    assert [r.text for r in (first, second, third)] == ["ok", "ok", "ok"]
    assert server.request_count == 3


def test_dropped_client_is_closed_with_its_loop(server: OpenAIServer) -> None:
    async def use_once() -> str:
        lm = make_lm(server)
        return (await lm.complete(ask())).text

    assert asyncio.run(use_once()) == "ok"  # a leaked socket would fail under -W error


def test_bad_configuration_is_reported() -> None:
    with pytest.raises(ConfigError, match="http://"):
        OpenAILM("m", base_url="localhost:8000/v1", cache=None)
    with pytest.raises(ConfigError, match="ResponseCache"):
        OpenAILM("m", base_url="http://localhost/v1", cache="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAILM("m", base_url="http://localhost/v1", cache=None, max_concurrency=0)


async def test_unreachable_server_raises_connection_error() -> None:
    with socket.socket() as unused:  # bound but not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        url = f"http://127.0.0.1:{port}/v1"
        lm = OpenAILM("m", base_url=url, cache=None, max_retries=2, backoff=0.01)
        with pytest.raises(LMConnectionError, match="could not reach"):
            await lm.complete(ask())
        await lm.aclose()
    assert lm.usage.snapshot()["calls"] == 3


def test_deepcopy_shares_the_client(server: OpenAIServer) -> None:
    lm = make_lm(server)
    assert copy.deepcopy({"lm": lm})["lm"] is lm


def test_request_bodies_are_compact_json_in_build_order() -> None:
    from rhizome.engine.client.wire_format import dumps

    body = {"model": "m", "messages": [{"role": "user", "content": 'héllo "x"\n\u2028'}], "n": 2}
    body["response_format"] = {"properties": {"reasoning": {}, "answer": {}}}  # never sorted
    canonical = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert dumps(body) == canonical.encode()
    # What the fast encoder refuses goes through the standard library: same form.
    odd = {"model": "m", "logit_bias": {50256: -100}, "seed": 2**70}
    assert json.loads(dumps(odd)) == {"model": "m", "logit_bias": {"50256": -100}, "seed": 2**70}
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        dumps({"model": "m", "messages": [object()]})
