"""Provider concurrency limits: throughput settles near the limit without a retry storm.

:class:`tests.reliability.faults.CappedServer` serves ``CAP`` requests at a time
and answers 429 with a ``Retry-After`` beyond that. The client is allowed four
times as many requests at once, so it must learn the server's limit from the
429s. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time

import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from tests.reliability.faults import CappedServer

CAP = 8
SERVICE_TIME = 0.02  # seconds per admitted request: the ideal is CAP / SERVICE_TIME per second
CLIENT_CONCURRENCY = 4 * CAP


def throughput(server: CappedServer, examples: int) -> tuple[float, float]:
    """Served requests per second over the run, and 429s per served request late in it."""
    times = [t for t, _ in server.arrivals]
    span = times[-1] - times[0]
    late = [admitted for t, admitted in server.arrivals if t >= times[0] + span / 2]
    return examples / span, late.count(False) / max(1, late.count(True))


async def run_capped(n: int, client_concurrency: int) -> tuple[CappedServer, list[bool], float]:
    """Run ``n`` examples against a fresh capped server; the server, outcomes and seconds."""
    server = CappedServer(cap=CAP, service_time=SERVICE_TIME, retry_after_ms=50)
    with server:
        lm = OpenAILM(
            "test-model",
            base_url=server.url,
            cache=None,
            max_concurrency=client_concurrency,
            timeout=5.0,
            max_retries=5,
            backoff=0.01,
        )
        graph = Graph("echo").add("answer", Predict("question -> answer"))
        start = time.perf_counter()
        results = await graph.batch(
            [{"question": f"#{i}#"} for i in range(n)], concurrency=64, lm=lm
        )
        elapsed = time.perf_counter() - start
        await lm.aclose()
    return server, [r.ok for r in results], elapsed


@pytest.mark.slow
async def test_throughput_settles_near_the_servers_limit_without_a_retry_storm() -> None:
    n = 1200
    # The baseline: a client told the limit, so it never meets a 429.
    matched, matched_ok, _ = await run_capped(n, CAP)
    assert all(matched_ok)
    assert matched.rejected == 0
    baseline, _ = throughput(matched, n)

    server, ok, elapsed = await run_capped(n, CLIENT_CONCURRENCY)
    served, late_429_ratio = throughput(server, n)
    print(
        f"\ncap {CAP} concurrent, client allows {CLIENT_CONCURRENCY}: {n} examples in "
        f"{elapsed:.2f} s, {served:.0f} served/s ({served / baseline:.0%} of the {baseline:.0f}/s "
        f"of a client set to the cap; ideal {CAP / SERVICE_TIME:.0f}/s), 429s: "
        f"{server.rejected} ({server.rejected / n:.1%} of examples; {late_429_ratio:.1%} per "
        f"success in the second half), peak served at once {server.peak_active}, lost "
        f"{ok.count(False)}"
    )
    assert all(ok), "no example may fail for being rate limited"
    assert server.admitted == n
    assert server.peak_active == CAP
    # No storm: after learning the limit, rejected requests are a small share.
    assert server.rejected <= (CLIENT_CONCURRENCY - CAP) + 0.1 * n
    assert late_429_ratio <= 0.1
    # Near the limit: about as fast as a client configured with the cap (this machine is
    # shared, so the margin is wide).
    assert served >= 0.6 * baseline
