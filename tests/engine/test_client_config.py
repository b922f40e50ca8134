"""OpenAILM's option groups (RetryPolicy, Limits, RequestDefaults) and their flat keywords."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from rhizome.engine.client.openai import Limits, OpenAILM, RequestDefaults
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.client.retry import RetryPolicy
from rhizome.engine.errors import ConfigError, LMStatusError
from tests.server import OpenAIServer, Reply

URL = "http://127.0.0.1:9/v1"


def ask(text: str = "hello") -> LMRequest:
    return LMRequest(messages=({"role": "user", "content": text},))


def settings(lm: OpenAILM) -> tuple[Any, ...]:
    """What the hot path reads, resolved once in __init__."""
    return (
        lm._max_concurrency,
        lm._timeout,
        lm._max_retries,
        lm._backoff,
        lm._max_wait,
        lm._temperature,
        lm._max_tokens,
        lm.limits,
        lm.retry,
        lm.defaults,
    )


def test_defaults_are_the_flat_defaults() -> None:
    lm = OpenAILM("m", base_url=URL, cache=None)
    assert lm.retry == RetryPolicy(max_retries=5, backoff=0.5, max_wait=30.0)
    assert lm.limits == Limits(max_concurrency=32, timeout=60.0)
    assert lm.defaults == RequestDefaults(temperature=None, max_tokens=None)
    assert (lm._max_retries, lm._backoff, lm._max_wait, lm._timeout) == (5, 0.5, 30.0, 60.0)


def test_group_form_and_flat_form_build_the_same_client() -> None:
    flat = OpenAILM(
        "m",
        base_url=URL,
        cache=None,
        max_retries=2,
        backoff=0.1,
        max_wait=3.0,
        max_concurrency=4,
        timeout=9.0,
        temperature=0.3,
        max_tokens=50,
    )
    grouped = OpenAILM(
        "m",
        base_url=URL,
        cache=None,
        retry=RetryPolicy(max_retries=2, backoff=0.1, max_wait=3.0),
        limits=Limits(max_concurrency=4, timeout=9.0),
        defaults=RequestDefaults(temperature=0.3, max_tokens=50),
    )
    assert settings(flat) == settings(grouped)
    assert repr(flat) == repr(grouped)


def test_some_flat_keywords_fill_the_rest_from_defaults() -> None:
    lm = OpenAILM("m", base_url=URL, cache=None, max_retries=1, timeout=5)
    assert lm.retry == RetryPolicy(max_retries=1)
    assert lm.limits == Limits(timeout=5)


async def test_group_and_flat_clients_retry_alike(server: OpenAIServer) -> None:
    results = []
    for options in (
        {"max_retries": 2, "backoff": 0.01},
        {"retry": RetryPolicy(max_retries=2, backoff=0.01)},
    ):
        server.script([Reply(status=503)] * 5)
        lm = OpenAILM("test-model", base_url=server.url, cache=None, **options)
        with pytest.raises(LMStatusError, match="gave up after 3 attempts"):
            await lm.complete(ask())
        results.append(lm.usage.snapshot()["calls"])
        server.script([])
        server.responder = lambda body: "fine"
        reply = await lm.complete(ask())
        assert reply.choices[0].text == "fine"
        await lm.aclose()
    assert results == [3, 3]


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"retry": RetryPolicy(), "max_retries": 1}, "retry=RetryPolicy(...) and max_retries="),
        ({"limits": Limits(), "timeout": 5.0}, "limits=Limits(...) and timeout="),
        (
            {"limits": Limits(), "max_concurrency": 2, "timeout": 5.0},
            "limits=Limits(...) and max_concurrency=, timeout=",
        ),
        (
            {"defaults": RequestDefaults(), "temperature": 0.5},
            "defaults=RequestDefaults(...) and temperature=",
        ),
    ],
)
def test_a_group_and_its_flat_keyword_together_are_refused(
    options: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match="not both") as info:
        OpenAILM("m", base_url=URL, cache=None, **options)
    assert f"OpenAILM() got both {names};" in str(info.value)


def test_a_group_with_another_groups_flat_keyword_is_fine() -> None:
    lm = OpenAILM("m", base_url=URL, cache=None, retry=RetryPolicy(max_retries=0), timeout=2.0)
    assert (lm.retry.max_retries, lm.limits.timeout) == (0, 2.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetryPolicy(max_retries=-1), "max_retries, backoff and max_wait must not be"),
        (lambda: RetryPolicy(backoff=-0.5), "must not be negative"),
        (lambda: RetryPolicy(max_retries=2.5), r"RetryPolicy\(max_retries=2.5\) must be an int"),
        (lambda: RetryPolicy(max_wait="10"), r"RetryPolicy\(max_wait='10'\) must be a number"),
        (lambda: Limits(max_concurrency=0), "max_concurrency must be at least 1, got 0"),
        (lambda: Limits(timeout=0), "timeout must be positive seconds, got 0"),
        (lambda: Limits(max_concurrency=True), r"Limits\(max_concurrency=True\) must be an int"),
        (lambda: RequestDefaults(temperature=-1.0), r"temperature=-1.0\) must be a number >= 0"),
        (lambda: RequestDefaults(max_tokens=0), r"max_tokens=0\) must be an int >= 1"),
    ],
)
def test_bad_values_in_a_group_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be at least 1, got 0"),
        ({"timeout": -1.0}, "timeout must be positive seconds, got -1.0"),
        (
            {"max_retries": -1},
            "max_retries, backoff and max_wait must not be negative; got "
            "max_retries=-1, backoff=0.5, max_wait=30.0",
        ),
    ],
)
def test_flat_keywords_keep_their_messages(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OpenAILM("m", base_url=URL, cache=None, **options)


def test_groups_are_frozen_and_read_only() -> None:
    lm = OpenAILM("m", base_url=URL, cache=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lm.retry.max_retries = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        lm.limits = Limits()  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]  # keyword-only
