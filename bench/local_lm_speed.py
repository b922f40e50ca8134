"""Measure the embedded model's speed and memory on this machine.

Starts the local llama.cpp server, sends fresh (uncached) prompts, and reports
llama.cpp's own timings: prompt tokens/s, generated tokens/s for one request
and for ``--parallel`` requests at once, and the server's resident memory::

    python bench/local_lm_speed.py --threads 2 --parallel 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from rhizome.tools.embedded.server import start_local_server

_FILLER = (
    "The archive of the harbour office lists ships, cargoes and the weather of each day. "
    "Clerks copied every entry twice, once for the office and once for the guild. "
)


def _ask(base_url: str, salt: int, prompt_repeats: int, max_tokens: int) -> dict[str, Any]:
    content = f"Note {salt}. " + _FILLER * prompt_repeats + "Summarise the text above."
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,  # always generate max_tokens, for a stable measurement
        "cache_prompt": False,
    }
    reply = httpx.post(base_url + "/chat/completions", json=body, timeout=600).json()
    timings: dict[str, Any] = reply["timings"]
    return timings


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    with start_local_server(
        n_parallel=args.parallel, ctx_size=args.ctx_size, threads=args.threads
    ) as server:
        print(f"started in {time.monotonic() - started:.1f} s: {server!r}")
        _ask(server.base_url, -1, 2, 8)  # warm-up
        single = [_ask(server.base_url, i, 12, 128) for i in range(args.rounds)]
        prompt_tps = statistics.median(t["prompt_per_second"] for t in single)
        gen_tps = statistics.median(t["predicted_per_second"] for t in single)
        print(f"one request: prompt {single[0]['prompt_n']} tokens at {prompt_tps:.0f} tok/s, "
              f"generation at {gen_tps:.1f} tok/s (median of {args.rounds})")  # fmt: skip
        began = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            batch = list(
                pool.map(lambda i: _ask(server.base_url, 100 + i, 12, 128), range(args.parallel))
            )
        wall = time.monotonic() - began
        tokens = sum(t["predicted_n"] + t["prompt_n"] for t in batch)
        generated = sum(t["predicted_n"] for t in batch)
        print(f"{args.parallel} requests at once: {generated} generated + prompts, "
              f"{tokens / wall:.0f} tok/s total, {generated / wall:.1f} generated tok/s "
              f"aggregate, {wall:.1f} s wall")  # fmt: skip
        assert server.pid is not None
        memory = _memory_kib(server.pid)
        print(f"server memory: RSS {memory['VmRSS'] / 1024:.0f} MiB, "
              f"peak {memory['VmHWM'] / 1024:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
