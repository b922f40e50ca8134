"""rhizome's side of the benchmark; one measurement per process, printed as ``RESULT {json}``.

Usage: ``python bench/rhizome_bench.py URL MODE [args]`` where MODE is

- ``overhead [calls]``: sequential single-node graph runs (server latency 0);
- ``batch [inputs] [concurrency]``: the three-step pipeline over many inputs;
- ``client [requests] [concurrency]``: ``OpenAILM.complete`` alone, no graph;
- ``httpx [requests] [concurrency]``: one bare ``httpx.AsyncClient`` pool
  sized to the concurrency, the "before" of the pool-collapse comparison.

The caller sets the server's latency and checks its request count; this
script also checks that every call reached the server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from typing import Any

from common import MODEL, Clock, emit, measure, questions, rates, retrieve


def _lm(url: str, concurrency: int) -> Any:
    from rhizome import OpenAILM

    return OpenAILM(MODEL, base_url=url, api_key="bench", cache=None, max_concurrency=concurrency)


def pipeline() -> Any:
    """Query writer -> Python retrieval -> answerer: two LM calls per input."""
    from rhizome import FunctionNode, Graph, Predict

    graph = Graph("rag")
    graph.add("write_query", Predict("question -> query"))
    graph.add("search", FunctionNode(retrieve, outputs=["passages"]))
    graph.add("answer", Predict("question, passages: list[str] -> answer"))
    graph.connect("write_query", "search").connect("search", "answer")
    return graph.validate()


async def overhead(url: str, calls: int, rounds: int = 5) -> dict[str, Any]:
    """Microseconds per sequential single-node run: the median of ``rounds`` rounds."""
    from rhizome import Graph, Predict

    graph = Graph("one").add("answer", Predict("question -> answer")).validate()
    lm = _lm(url, 8)
    items = questions(calls + 20)
    for q in items[calls:]:  # warm up: connections, caches of templates
        await graph.run(question=q, lm=lm)
    walls, cpus = [], []
    for _ in range(rounds):
        with Clock() as clock:
            for q in items[:calls]:
                prediction = await graph.run(question=q, lm=lm)
        walls.append(clock.wall / calls * 1e6)
        cpus.append(clock.cpu / calls * 1e6)
    assert prediction["answer"], prediction
    await lm.aclose()
    return _per_call(calls, rounds, walls, cpus)


def _per_call(calls: int, rounds: int, walls: list[float], cpus: list[float]) -> dict[str, Any]:
    return {
        "calls": calls,
        "rounds": rounds,
        "us_per_call": statistics.median(walls),
        "us_per_call_min": min(walls),
        "cpu_us_per_call": statistics.median(cpus),
    }


async def batch(url: str, inputs: int, concurrency: int) -> dict[str, Any]:
    """Requests per second of the pipeline over ``inputs`` inputs."""
    graph = pipeline()
    lm = _lm(url, concurrency)
    examples = [{"question": q} for q in questions(inputs)]
    with Clock() as clock:
        results = await graph.batch(examples, concurrency=concurrency, lm=lm, progress=False)
    await lm.aclose()
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} inputs failed, first: {failed[0]}")
    return rates(inputs * 2, clock, ok=len(results))


async def client(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """Requests per second of ``OpenAILM.complete`` alone (the sharded pools)."""
    from rhizome.engine.client.protocol import LMRequest

    lm = _lm(url, concurrency)
    asks = [
        LMRequest(messages=({"role": "user", "content": f"{q}\n\nReply with <answer>."},))
        for q in questions(requests)
    ]
    queue = list(reversed(asks))

    async def worker() -> None:
        while queue:
            await lm.complete(queue.pop())

    with Clock() as clock:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    await lm.aclose()
    return rates(requests, clock, ok=requests)


async def bare_httpx(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """Requests per second of one ``httpx.AsyncClient`` whose pool holds every connection."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    body = [
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": q}]}).encode()
        for q in questions(requests)
    ]
    queue = list(reversed(body))
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def worker() -> None:
            while queue:
                reply = await http.post(url + "/chat/completions", content=queue.pop())
                reply.raise_for_status()

        with Clock() as clock:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rates(requests, clock, ok=requests)


def main() -> None:
    """Command line entry (see the module docstring)."""
    url, mode, *rest = sys.argv[1:]
    numbers = [int(x) for x in rest]
    runners = {
        "overhead": lambda: overhead(url, *(numbers or [300])),
        "batch": lambda: batch(url, *(numbers or [1000, 256])),
        "client": lambda: client(url, *(numbers or [2000, 256])),
        "httpx": lambda: bare_httpx(url, *(numbers or [2000, 256])),
    }
    emit(measure(lambda: asyncio.run(runners[mode]())))


if __name__ == "__main__":
    main()
