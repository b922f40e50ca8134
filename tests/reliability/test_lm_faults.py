"""Faults from LM servers: every example ends with a result or a typed error, none lost.

The server is the real HTTP test server answering through
:class:`tests.reliability.faults.FaultInjector`. Run with ``-s`` to see the
figures (faults injected, examples processed, lost, duplicated, throughput).
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rhizome.engine.batches.batch import BatchResult
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from tests.reliability.faults import FAULT_KINDS, FaultInjector, Faults
from tests.server import OpenAIServer

# Why an example may fail, by the innermost error type: each names the cause.
TYPED_CAUSES = {
    "LMStatusError",
    "LMConnectionError",
    "LMTimeoutError",
    "LMReplyError",
    "ParseError",
}


def echo_graph() -> Graph:
    return Graph("echo").add("answer", Predict("question -> answer"))


def questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"Repeat the tag of question #{i}#."} for i in range(n)]


@pytest.fixture
async def fault_lm(server: OpenAIServer) -> AsyncIterator[OpenAILM]:
    """A client with short timeouts and tiny backoff, so faults cost little time."""
    client = OpenAILM(
        "test-model",
        base_url=server.url,
        cache=None,
        max_concurrency=64,
        timeout=1.0,
        max_retries=4,
        backoff=0.001,
        max_wait=0.05,
    )
    yield client
    await client.aclose()


def check_outcomes(results: list[BatchResult], n: int) -> tuple[int, int]:
    """Every example once, in order, answered for itself or failed with a typed error."""
    assert [r.index for r in results] == list(range(n)), "lost or duplicated results"
    failed = 0
    for r in results:
        if r.ok:
            assert r.prediction is not None
            assert r.prediction["answer"] == f"echo {r.index}", "a result went to another example"
            continue
        failed += 1
        assert r.error is not None
        assert r.error["type"] == "NodeError"
        assert r.error["node"] == "answer"
        assert r.error["cause"]["type"] in TYPED_CAUSES, r.error
        assert r.error["message"]
    return n - failed, failed


@pytest.mark.slow
async def test_5000_examples_under_10_percent_faults(
    server: OpenAIServer, fault_lm: OpenAILM, tmp_path: Path
) -> None:
    n, max_retries, calls_per_example = 5000, 4, 2  # a reply that does not parse is repaired once
    injector = FaultInjector(Faults(rate=0.1, slow_delay=1.5, seed=7))
    server.responder = injector
    start = time.perf_counter()
    results = await echo_graph().batch(
        questions(n), concurrency=64, lm=fault_lm, run_dir=tmp_path / "run"
    )
    elapsed = time.perf_counter() - start

    ok, failed = check_outcomes(results, n)
    requests = server.request_count
    assert set(injector.injected) == set(FAULT_KINDS), "every kind of fault was exercised"
    assert injector.total_injected > 0.08 * n
    # Retries are bounded: each fault costs at most one more request (a retry or a repair).
    assert n <= requests <= n + injector.total_injected
    assert requests <= n * calls_per_example * (max_retries + 1)
    # The client's accounting matches the server's own count.
    usage = fault_lm.usage
    assert usage.calls == requests
    trace_calls = sum(r.trace.usage()["calls"] for r in results if r.trace is not None)
    assert usage.calls - usage.retries == trace_calls
    assert usage.errors == sum(
        r.error is not None and r.error["cause"]["type"] != "ParseError" for r in results
    )
    # The journal holds every example exactly once.
    journal = (tmp_path / "run" / "results.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in journal.splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(n))
    duplicates = sum(c - 1 for c in collections.Counter(r.index for r in results).values())
    why = collections.Counter(r.error["cause"]["type"] for r in results if r.error is not None)
    print(
        f"\nfaults: {injector.total_injected} injected "
        f"({dict(sorted(injector.injected.items()))}); "
        f"examples: {n} processed, {ok} ok, {failed} failed with typed errors {dict(why)}, "
        f"lost {n - len(results)}, duplicates {duplicates}; requests {requests} "
        f"(retries {usage.retries}); {elapsed:.1f} s, {n / elapsed:.0f} examples/s"
    )


EXPECTED_CAUSE = {
    "rate_limit": ("LMStatusError", 429),
    "server_error": ("LMStatusError", 500),
    "unavailable": ("LMStatusError", 503),
    "drop": ("LMConnectionError", None),
    "slow": ("LMTimeoutError", None),
    "truncated": ("LMReplyError", None),
    "empty_choices": ("LMReplyError", None),
    "missing_fields": ("LMReplyError", None),
    "wrong_format": ("ParseError", None),
}


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_a_fault_that_persists_ends_in_an_error_naming_it(
    server: OpenAIServer, kind: str
) -> None:
    injector = FaultInjector(Faults(rate=1.0, kinds=(kind,), slow_delay=0.6))
    server.responder = injector
    lm = OpenAILM(
        "test-model",
        base_url=server.url,
        cache=None,
        timeout=0.2,
        max_retries=2,
        backoff=0.001,
        max_wait=0.01,
    )
    results = await echo_graph().batch(questions(4), concurrency=4, lm=lm)
    await lm.aclose()

    assert [r.index for r in results] == [0, 1, 2, 3]
    cause, status = EXPECTED_CAUSE[kind]
    for r in results:
        assert r.error is not None
        assert r.error["cause"]["type"] == cause, r.error
        if status is not None:
            assert f"HTTP {status}" in r.error["message"]
    if kind == "wrong_format":
        assert server.request_count == 4 * 2  # the reply and one repair; parsing is not retried
        assert "did not parse, even after a repair attempt" in results[0].error["message"]
    else:
        assert server.request_count == 4 * 3  # 1 + max_retries attempts, then a typed error
        assert "gave up after 3 attempts" in results[0].error["message"]
    assert lm.usage.calls == server.request_count


async def test_faults_then_recovery_give_every_example_its_own_answer(
    server: OpenAIServer, fault_lm: OpenAILM
) -> None:
    injector = FaultInjector(Faults(rate=0.3, slow_delay=1.2, seed=3))
    server.responder = injector
    results = await echo_graph().batch(questions(300), concurrency=32, lm=fault_lm)
    ok, _ = check_outcomes(results, 300)
    assert ok >= 290
    assert 300 <= server.request_count <= 300 + injector.total_injected
    assert fault_lm.usage.calls == server.request_count
