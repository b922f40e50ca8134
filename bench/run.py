"""Run the whole benchmark, rhizome and DSPy side by side, and write bench/results.json.

    /work/venv/bin/python bench/run.py            # median of 3 repetitions
    /work/venv/bin/python bench/run.py --reps 1   # a quick look

DSPy runs from its own venv (``bench/.venv-dspy``; ``--setup`` creates it with
``pip install "dspy[optuna]==3.4.1"``, optuna for MIPROv2); rhizome never
imports it. The mock server runs in its own process and every measurement in a
fresh client process; ``--pin`` puts the server on the last CPU and the clients
on the first (on a machine shared with other work, leaving placement to the OS
measured steadier). Every client measurement is checked against the server's
request count. Repetitions are interleaved (rhizome, DSPy, rhizome, ...) so
both see the same machine load, and the load average is recorded next to each
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import configure, server_stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DSPY_VENV = HERE / ".venv-dspy"
DSPY_VERSION = "3.4.1"
PY = sys.executable


class Bench:
    """Runs measurement processes against one mock server and keeps their results."""

    def __init__(self, *, pin: bool, reps: int) -> None:
        self.pin = pin
        self.reps = reps
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        self.server: subprocess.Popen[str] | None = None
        self.base = ""
        self.runs: dict[str, list[dict[str, Any]]] = {}

    @property
    def url(self) -> str:
        """The mock server's OpenAI base URL."""
        return self.base + "/v1"

    def start_server(self) -> None:
        """Start the mock server (pinned to the last CPU when pinning) and read its port."""
        cmd = [PY, str(HERE / "mock_server.py")]
        if self.pin and len(self.cpus) > 1:
            cmd += ["--cpu", str(self.cpus[-1])]
        self.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"mock server did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"

    def stop_server(self) -> None:
        """Stop the mock server if it runs."""
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)

    def measure(
        self, key: str, python: str, script: str, args: list[str], *, latency: float, expect: int
    ) -> dict[str, Any]:
        """Run one measurement process; check the server saw ``expect`` requests (0: skip)."""
        configure(self.base, latency)
        cmd = [python, str(HERE / script), self.url, *args]
        if self.pin and len(self.cpus) > 1:
            cmd = ["taskset", "-c", str(self.cpus[0]), *cmd]
        load = os.getloadavg()[0]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(lines[-1][7:])
        result["server_requests"] = int(server_stats(self.base)["requests"])
        if expect and result["server_requests"] != expect:
            raise RuntimeError(f"{key}: server saw {result['server_requests']}, expected {expect}")
        result["load_1min"] = round(load, 2)
        self.runs.setdefault(key, []).append(result)
        _say(f"  {key}: {_short(result)}")
        return result


def _short(result: dict[str, Any]) -> str:
    keys = ("us_per_call", "req_per_s", "cpu_ms_per_request", "peak_rss_mib", "load_1min")
    return ", ".join(f"{k}={result[k]:.4g}" for k in keys if k in result)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def one_round(bench: Bench, dspy: str, calls: int, inputs: int) -> None:
    """One repetition of every measurement, rhizome and DSPy interleaved."""
    warm, rounds = 20, 5  # each overhead process: 20 warm-up calls, then 5 rounds
    bench.measure(
        "overhead.rhizome",
        PY,
        "rhizome_bench.py",
        ["overhead", str(calls)],
        latency=0,
        expect=rounds * calls + warm,
    )
    bench.measure("floor.rhizome", PY, "raw_client.py", ["floor", str(calls)], latency=0, expect=0)
    bench.measure(
        "overhead.dspy",
        dspy,
        "dspy_bench.py",
        ["overhead", str(calls)],
        latency=0,
        expect=rounds * calls + warm,
    )
    bench.measure("floor.dspy", PY, "raw_client.py", ["floor", str(calls)], latency=0, expect=0)
    bench.measure(
        "overhead.dspy_unknown_model",
        dspy,
        "dspy_bench.py",
        ["overhead", str(calls), "bench-unknown-model"],
        latency=0,
        expect=rounds * calls + warm,
    )
    for c in (64, 256):
        n = [str(inputs), str(c)]
        runs = [
            ("rhizome", PY, "rhizome_bench.py", ["batch", *n]),
            ("dspy_threads", dspy, "dspy_bench.py", ["batch", *n]),
            ("dspy_async", dspy, "dspy_bench.py", ["abatch", *n]),
            ("raw", PY, "raw_client.py", ["throughput", str(2 * inputs), str(c)]),
        ]
        for name, python, script, args in runs:
            bench.measure(f"batch{c}.{name}", python, script, args, latency=0.2, expect=2 * inputs)
    bench.measure(
        "pool256.httpx_one_pool",
        PY,
        "rhizome_bench.py",
        ["httpx", "500", "256"],
        latency=0.2,
        expect=500,
    )
    bench.measure(
        "pool256.rhizome_client",
        PY,
        "rhizome_bench.py",
        ["client", "2000", "256"],
        latency=0.2,
        expect=2000,
    )
    bench.measure(
        "server_ceiling.raw64",
        PY,
        "raw_client.py",
        ["throughput", "20000", "64"],
        latency=0,
        expect=20000,
    )


def import_times(dspy: str, reps: int) -> dict[str, list[float]]:
    """Seconds to import each package in a fresh interpreter (after Python's own start)."""
    code = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"
    out: dict[str, list[float]] = {"rhizome": [], "dspy": []}
    for _ in range(reps):
        for name, python in (("rhizome", PY), ("dspy", dspy)):
            done = subprocess.run(
                [python, "-c", code.format(name)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            out[name].append(float(done.stdout.strip().splitlines()[-1]))
    return out


def summarize(
    runs: dict[str, list[dict[str, Any]]], imports: dict[str, list[float]]
) -> dict[str, Any]:
    """Medians of every figure, overheads net of their floor, ratios to the ideal."""

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    s: dict[str, Any] = {}
    for who in ("rhizome", "dspy"):
        total = med(f"overhead.{who}", "us_per_call")
        floor = med(f"floor.{who}", "us_per_call")
        s[f"overhead_us.{who}"] = round(total - floor, 1)
        s[f"per_call_us.{who}"] = round(total, 1)
        s[f"floor_us.{who}"] = round(floor, 1)
        s[f"cpu_us_per_call.{who}"] = round(med(f"overhead.{who}", "cpu_us_per_call"), 1)
        floor_cpu = med(f"floor.{who}", "cpu_us_per_call")
        s[f"cpu_overhead_us.{who}"] = round(s[f"cpu_us_per_call.{who}"] - floor_cpu, 1)
    s["overhead_us.dspy_unknown_model"] = round(
        med("overhead.dspy_unknown_model", "us_per_call") - med("floor.dspy", "us_per_call"), 1
    )
    for c in (64, 256):
        ideal = c / 0.2
        for who in ("rhizome", "dspy_threads", "dspy_async", "raw"):
            rate = med(f"batch{c}.{who}", "req_per_s")
            s[f"batch{c}.req_per_s.{who}"] = round(rate, 1)
            s[f"batch{c}.ratio_to_ideal.{who}"] = round(rate / ideal, 3)
            s[f"batch{c}.cpu_ms_per_request.{who}"] = round(
                med(f"batch{c}.{who}", "cpu_ms_per_request"), 3
            )
            s[f"batch{c}.peak_rss_mib.{who}"] = med(f"batch{c}.{who}", "peak_rss_mib")
        best_dspy = max(s[f"batch{c}.req_per_s.dspy_threads"], s[f"batch{c}.req_per_s.dspy_async"])
        s[f"batch{c}.speedup_vs_best_dspy"] = round(s[f"batch{c}.req_per_s.rhizome"] / best_dspy, 2)
    for key in ("pool256.httpx_one_pool", "pool256.rhizome_client", "server_ceiling.raw64"):
        s[f"{key}.req_per_s"] = round(med(key, "req_per_s"), 1)
        s[f"{key}.cpu_ms_per_request"] = round(med(key, "cpu_ms_per_request"), 3)
    for name, values in imports.items():
        s[f"import_s.{name}"] = round(statistics.median(values), 3)
    return s


def table(s: dict[str, Any]) -> str:
    """The summary as a text table."""
    rows: list[tuple[str, str | None, str]] = [
        ("per-call overhead (µs, net of raw floor)", "overhead_us.rhizome", "overhead_us.dspy"),
        ("  per call / raw floor (µs)", "per_call_us.rhizome", "per_call_us.dspy"),
        ("  client CPU per call (µs)", "cpu_us_per_call.rhizome", "cpu_us_per_call.dspy"),
        ("  client CPU net of the floor's (µs)", "cpu_overhead_us.rhizome", "cpu_overhead_us.dspy"),
    ]
    for c in (64, 256):
        rows += [
            (
                f"batch c={c}: req/s (ideal {c / 0.2:.0f})",
                f"batch{c}.req_per_s.rhizome",
                f"batch{c}.req_per_s.dspy_threads",
            ),
            (
                "  ratio to ideal",
                f"batch{c}.ratio_to_ideal.rhizome",
                f"batch{c}.ratio_to_ideal.dspy_threads",
            ),
            ("  DSPy async (acall) req/s", None, f"batch{c}.req_per_s.dspy_async"),
            (
                "  client CPU per request (ms)",
                f"batch{c}.cpu_ms_per_request.rhizome",
                f"batch{c}.cpu_ms_per_request.dspy_threads",
            ),
            (
                "  peak RSS (MiB)",
                f"batch{c}.peak_rss_mib.rhizome",
                f"batch{c}.peak_rss_mib.dspy_threads",
            ),
        ]
    rows.append(("import time (s)", "import_s.rhizome", "import_s.dspy"))
    lines = [f"{'':44} {'rhizome':>10} {'DSPy':>10}"]
    for label, a, b in rows:
        left = f"{s[a]:>10}" if a else f"{'':>10}"
        lines.append(f"{label:44} {left} {s[b]:>10}")
    lines.append("")
    for c in (64, 256):
        lines.append(
            f"c={c}: raw asyncio sockets {s[f'batch{c}.req_per_s.raw']} req/s; "
            f"rhizome / best DSPy = {s[f'batch{c}.speedup_vs_best_dspy']}x"
        )
    lines.append(
        f"DSPy overhead with a model name it does not know: "
        f"{s['overhead_us.dspy_unknown_model']} µs"
    )
    lines.append(
        f"pool collapse at c=256: one httpx pool {s['pool256.httpx_one_pool.req_per_s']} "
        f"req/s ({s['pool256.httpx_one_pool.cpu_ms_per_request']} ms CPU/req); rhizome "
        f"client {s['pool256.rhizome_client.req_per_s']} req/s "
        f"({s['pool256.rhizome_client.cpu_ms_per_request']} ms CPU/req)"
    )
    lines.append(
        f"mock server ceiling (raw client, latency 0, 64 connections): "
        f"{s['server_ceiling.raw64.req_per_s']} req/s or more"
    )
    return "\n".join(lines)


def setup_dspy() -> None:
    """Create the DSPy venv used only by this benchmark."""
    subprocess.run([sys.executable, "-m", "venv", str(DSPY_VENV)], check=True)
    pip = [str(DSPY_VENV / "bin" / "pip"), "install", "-q", f"dspy[optuna]=={DSPY_VERSION}"]
    subprocess.run(pip, check=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": os.getloadavg(),
    }


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument(
        "--pin", action="store_true", help="server on the last CPU, clients on the first"
    )
    parser.add_argument("--setup", action="store_true", help="create the DSPy venv first")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    if args.setup or not (DSPY_VENV / "bin" / "python").exists():
        setup_dspy()
    dspy = str(DSPY_VENV / "bin" / "python")
    bench = Bench(pin=args.pin, reps=args.reps)
    info = machine()
    started = time.time()
    bench.start_server()
    try:
        for rep in range(args.reps):
            _say(f"repetition {rep + 1} of {args.reps}")
            one_round(bench, dspy, args.calls, args.inputs)
    finally:
        bench.stop_server()
    imports = import_times(dspy, args.reps)
    summary = summarize(bench.runs, imports)
    info["load_after"] = os.getloadavg()
    report = {
        "machine": info,
        "seconds": round(time.time() - started),
        "command": sys.argv,
        "summary": summary,
        "runs": bench.runs,
        "imports": imports,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(summary))


if __name__ == "__main__":
    main()
