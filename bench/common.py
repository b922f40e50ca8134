"""Helpers shared by every benchmark script (standard library only).

The scripts run under two interpreters: rhizome's venv and the separate DSPy
venv, so nothing here imports rhizome, DSPy or any third-party package.
"""

from __future__ import annotations

import json
import os
import resource
import time
import urllib.request
from collections.abc import Callable
from typing import Any

MODEL = "gpt-4o-mini"  # a name DSPy's cost tables know; the mock answers any name
PASSAGES = [f"Passage {i}: fact number {i} about the topic." for i in range(100)]


def retrieve(query: str, k: int = 3) -> list[str]:
    """The pipeline's Python retrieval step: ``k`` passages picked from the query."""
    start = sum(map(ord, query)) % (len(PASSAGES) - k)
    return PASSAGES[start : start + k]


def questions(n: int) -> list[str]:
    """``n`` distinct questions (distinct so no layer can answer from a cache)."""
    return [f"What is fact number {i} about topic {i * 7 % 13}?" for i in range(n)]


def server_stats(base: str) -> dict[str, Any]:
    """The mock server's counters (``base`` is ``http://127.0.0.1:PORT``)."""
    with urllib.request.urlopen(base + "/stats", timeout=10) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


def server_post(base: str, path: str, body: dict[str, Any] | None = None) -> None:
    """POST a control request (``/reset``, ``/config``) to the mock server."""
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(base + path, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


def configure(base: str, latency: float) -> None:
    """Reset the server's request count and set its latency."""
    server_post(base, "/reset")
    server_post(base, "/config", {"latency": latency})


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident memory of this process, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Clock:
    """Wall and CPU time of a block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self) -> Clock:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def rates(requests: int, clock: Clock, *, ok: int) -> dict[str, Any]:
    """Throughput figures of a timed run: requests/s and client CPU per request."""
    return {
        "requests": requests,
        "ok": ok,
        "wall_s": clock.wall,
        "req_per_s": requests / clock.wall,
        "cpu_ms_per_request": clock.cpu / requests * 1e3,
    }


def check_count(base: str, expected: int) -> int:
    """The server's request count; raises when it is not ``expected``."""
    got = int(server_stats(base)["requests"])
    if got != expected:
        raise RuntimeError(f"the server saw {got} requests, expected {expected}")
    return got


def emit(result: dict[str, Any]) -> None:
    """Print one measurement as the last stdout line, for run.py to read."""
    print("RESULT " + json.dumps(result), flush=True)


def pin(cpu: int | None) -> None:
    """Pin this process to ``cpu`` (no-op when None or unsupported)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def measure(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` and add the peak memory of the process to its result."""
    result = fn()
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result
