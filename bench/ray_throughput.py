"""Throughput on Ray next to one process, for a graph with a CPU-heavy Python step.

The graph: a query writer (LM) -> a Python retrieval step that burns about
2-3 ms of CPU per example (a stand-in for scoring passages in Python) -> an
answerer (LM), against ``bench/mock_server.py`` at latency 0, so the client's
own CPU is all that limits it. Measured:

- ``one_process``: ``graph.batch`` in this process.
- ``ray_1`` / ``ray_2``: :func:`rhizome.scale.ray_batch` on a local Ray
  instance with 1 and 2 worker actors (one process each, one CPU each).

Rates are measured from outside: a thread samples the mock server's request
count every 20 ms, and the steady rate is taken between 20% and 80% of the
requests (Ray's actor start-up, reported apart as ``startup_s``, and the tail
excluded). The overhead Ray adds per example is the difference
of CPU time per example between one process and one actor. An extrapolation to
10 machines multiplies the measured per-actor rate; it is labelled as such.

Run: ``python bench/ray_throughput.py [--examples 2000] [--out bench/results_ray.json]``
(needs the ray extra; about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import MODEL, PASSAGES, configure, questions, server_stats  # noqa: E402

__all__ = ("build", "main")

WORK = 40_000  # loop length of the CPU-heavy step: about 2.3 ms of CPU here
CALLS = 2  # LM calls per example


def heavy_retrieve(query: str) -> list[str]:
    """Python retrieval with real CPU cost: a few ms of arithmetic, then k passages."""
    checksum = sum(i * i for i in range(WORK))
    start = (sum(map(ord, query)) + checksum) % (len(PASSAGES) - 3)
    return PASSAGES[start : start + 3]


def build() -> Any:
    """The benchmark graph (a factory the Ray workers import by file path)."""
    from rhizome import FunctionNode, Graph, Predict

    return (
        Graph("ray_bench", outputs=["answer"])
        .add("write_query", Predict("question -> query"))
        .add("retrieve", FunctionNode(heavy_retrieve, outputs=["context"]))
        .add("answer", Predict("context: list[str], question -> answer"))
        .connect("write_query", "retrieve")
        .connect("retrieve", "answer")
    )


def start_server() -> tuple[subprocess.Popen[str], str]:
    """The mock server in its own process; its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "mock_server.py"), "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


class Sampler:
    """The mock server's request count, sampled every 20 ms from a thread (outside view).

    The steady rate is taken between 20% and 80% of the run's requests, so
    start-up (Ray's actor pool) and the tail do not count.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        configure(self.base, 0.0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.perf_counter(), int(server_stats(self.base)["requests"])))

    def steady_examples_per_s(self, total_requests: int) -> float:
        """Examples/s between 20% and 80% of ``total_requests`` (2 LM calls an example)."""
        low = next(t for t, n in self.samples if n >= 0.2 * total_requests)
        high = next(t for t, n in self.samples if n >= 0.8 * total_requests)
        return 0.6 * total_requests / (high - low) / CALLS


def one_process(base: str, examples: list[dict[str, str]], concurrency: int) -> dict[str, Any]:
    """``graph.batch`` in this process."""
    import anyio

    from rhizome import OpenAILM

    async def run() -> tuple[float, float, int]:
        async with OpenAILM(MODEL, base_url=base + "/v1", cache=None, max_concurrency=256) as lm:
            graph = build()
            wall, cpu = time.perf_counter(), time.process_time()
            results = await graph.batch(examples, concurrency=concurrency, lm=lm, progress=False)
            ok = sum(r.ok for r in results)
            return time.perf_counter() - wall, time.process_time() - cpu, ok

    with Sampler(base) as sampler:
        wall, cpu, ok = anyio.run(run)
    n = len(examples)
    return {
        "examples": n,
        "ok": ok,
        "wall_s": wall,
        "examples_per_s": sampler.steady_examples_per_s(n * CALLS),
        "examples_per_s_whole_run": n / wall,
        "cpu_ms_per_example": cpu / n * 1e3,
    }


def on_ray(
    base: str, examples: list[dict[str, str]], actors: int, concurrency: int, cap: int
) -> dict[str, Any]:
    """``ray_batch`` with ``actors`` workers; the steady rate seen by the server."""
    from rhizome import OpenAILM
    from rhizome.scale import RayOptions, ray_batch

    lm = OpenAILM(MODEL, base_url=base + "/v1", cache=None, max_concurrency=256)
    options = RayOptions(actors=actors, concurrency=concurrency, batch_size=64, max_concurrency=cap)
    factory = f"{Path(__file__).resolve()}:build"
    with Sampler(base) as sampler:
        start = time.perf_counter()
        rows = ray_batch(factory, examples, lm=lm, options=options, progress=False)
        wall = time.perf_counter() - start
    n = len(examples)
    first = next(t for t, count in sampler.samples if count > 0)
    return {
        "actors": actors,
        "examples": n,
        "ok": sum(r["error"] is None for r in rows),
        "wall_s": wall,
        "startup_s": first - start,
        "examples_per_s": sampler.steady_examples_per_s(n * CALLS),
        "shared_cap": cap or None,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the three measurements and write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results_ray.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    import ray

    examples = [{"question": q} for q in questions(args.examples)]
    server, base = start_server()
    try:
        results: dict[str, Any] = {"one_process": one_process(base, examples, args.concurrency)}
        print("one process", json.dumps(results["one_process"]), flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for actors in (1, 2):
            key = f"ray_{actors}"
            results[key] = on_ray(base, examples, actors, args.concurrency, cap=0)
            print(key, json.dumps(results[key]), flush=True)
        results["ray_2_shared_cap_256"] = on_ray(base, examples, 2, args.concurrency, cap=256)
        print("ray_2 with the shared cap", json.dumps(results["ray_2_shared_cap_256"]), flush=True)
        ray.shutdown()
    finally:
        server.terminate()
        server.wait()
    results["derived"] = derived(results)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "examples": args.examples,
        "concurrency_per_actor": args.concurrency,
        "lm_calls_per_example": 2,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["derived"], indent=2))


def derived(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios, Ray's overhead per example, and the labelled 10-machine extrapolation."""
    one = results["one_process"]["examples_per_s"]
    r1 = results["ray_1"]["examples_per_s"]
    r2 = results["ray_2"]["examples_per_s"]
    return {
        "ray_1_over_one_process": r1 / one,
        "ray_2_over_one_process": r2 / one,
        "ray_2_over_ray_1": r2 / r1,
        "ray_overhead_ms_per_example": 1e3 / r1 - 1e3 / one,
        "extrapolation_10_machines_8_actors_each_examples_per_s": {
            "value": r1 * 8 * 10,
            "label": "EXTRAPOLATION, not measured: the measured steady rate of one actor x 80 "
            "actors, assuming each actor has its own core and the endpoint is not the limit",
        },
    }


if __name__ == "__main__":
    main()
