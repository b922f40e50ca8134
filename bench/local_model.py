"""Generated tokens/s of the embedded local model for few-shot prompts at concurrency 1, 4, 8.

    /work/venv/bin/python bench/local_model.py [--prompts 100] [--threads N]

One llama.cpp server with 8 parallel slots (continuous batching) and prompt
caching: every prompt shares the same system message and few-shot demos, so
after the first request only each question's own tokens are prefilled. The
prompts go through a rhizome ``Predict`` node with ``graph.batch`` at each
concurrency, with the response cache off; the figure is completion tokens
(as the server counts them) divided by wall time. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from common import emit

DEMOS = [
    {"question": "What is 12 + 30?", "answer": "42"},
    {"question": "What is 7 times 8?", "answer": "56"},
    {"question": "What is 100 minus 36?", "answer": "64"},
    {"question": "What is half of 90?", "answer": "45"},
]


def prompts(n: int) -> list[dict[str, str]]:
    """``n`` distinct arithmetic questions."""
    return [{"question": f"What is {17 + i} + {5 + 3 * i}?"} for i in range(n)]


async def measure(lm: Any, n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Run the few-shot prompts at ``concurrency``; tokens/s and how many parsed."""
    from rhizome import Graph, Predict

    node = Predict(
        "question -> answer",
        instruction="Answer the arithmetic question with the number only.",
        demos=DEMOS,
        max_tokens=max_tokens,
        temperature=0.0,
    )
    graph = Graph("fewshot").add("answer", node)
    before = lm.usage.snapshot()
    started = time.perf_counter()
    results = await graph.batch(prompts(n), concurrency=concurrency, lm=lm, progress=False)
    wall = time.perf_counter() - started
    after = lm.usage.snapshot()
    generated = after["completion_tokens"] - before["completion_tokens"]
    return {
        "concurrency": concurrency,
        "prompts": n,
        "ok": sum(r.ok for r in results),
        "wall_s": round(wall, 2),
        "generated_tokens": generated,
        "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
        "generated_tokens_per_s": round(generated / wall, 1),
        "requests": after["calls"] - before["calls"],
    }


async def prefix_probe(lm: Any) -> dict[str, Any]:
    """What the prefix cache saves: llama.cpp's own count of prompt tokens it evaluated.

    Sends the last few-shot prompt again with a new question, once with the
    server's prompt cache and once without (``cache_prompt: false``), and reads
    ``timings.prompt_n`` (tokens evaluated) against ``usage.prompt_tokens``.
    """
    import httpx

    messages = [dict(m) for m in lm.inspect_history(1)[0].request.messages]
    # A question the server has not seen after the shared few-shot prefix.
    messages[-1]["content"] = messages[-1]["content"].replace("What is", "Compute", 1)
    body = {"model": lm.name, "messages": messages, "max_tokens": 1, "temperature": 0}
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=120) as http:
        for label, cached in (("with_cache", True), ("without_cache", False)):
            reply = await http.post(
                f"{lm.base_url}/chat/completions", json={**body, "cache_prompt": cached}
            )
            data = reply.raise_for_status().json()
            timings = data.get("timings", {})
            out[label] = {
                "prompt_tokens": data["usage"]["prompt_tokens"],
                "evaluated": timings.get("prompt_n"),
                "prompt_ms": round(timings.get("prompt_ms", 0.0), 1),
            }
    return out


async def run(n: int, threads: int | None, max_tokens: int) -> dict[str, Any]:
    """Start the embedded model once (8 slots) and measure at concurrency 1, 4 and 8."""
    from rhizome.tools.embedded.lm import async_local_lm

    out: dict[str, Any] = {"threads": threads or os.cpu_count(), "runs": []}
    async with async_local_lm(n_parallel=8, ctx_size=1024, threads=threads, cache=None) as lm:
        await measure(lm, 2, 1, max_tokens)  # warm up: load weights, cache the shared prefix
        for concurrency in (1, 4, 8):
            result = await measure(lm, n, concurrency, max_tokens)
            out["runs"].append(result)
            print(result, file=sys.stderr, flush=True)
        out["prefix_cache"] = await prefix_probe(lm)
        print(out["prefix_cache"], file=sys.stderr, flush=True)
    out["load_after"] = os.getloadavg()
    return out


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()
    result = asyncio.run(run(args.prompts, args.threads, args.max_tokens))
    result["load_before"] = load
    emit(result)


if __name__ == "__main__":
    main()
