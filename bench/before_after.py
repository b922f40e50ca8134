"""Two rhizome checkouts measured in one run: per-call overhead and batch throughput.

    python bench/before_after.py BEFORE_PYTHON AFTER_PYTHON [--reps 3] [--inputs 1000]

Each Python is a virtual environment with one checkout installed (``pip
install -e``). Both run this checkout's ``bench/rhizome_bench.py`` against one
mock server, interleaved (before, after, before, ...) so both see the same
machine load; the medians are printed and written to
``bench/results_before_after.json``. Used to check that a refactoring loses
nothing: ``overhead`` (sequential single-node runs, latency 0) and ``batch``
at concurrency 64 and 256 (latency 200 ms, two LM calls per input).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from run import HERE, Bench, machine


def _revision(python: str) -> str:
    """The git commit of the checkout that ``python``'s environment has installed."""
    code = "import rhizome, pathlib; print(pathlib.Path(rhizome.__file__).resolve().parents[1])"
    # run from / so that this checkout's folders do not shadow the installed package
    root = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    folder = root.stdout.strip()
    head = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    return head.stdout.strip()


def main() -> None:
    """Measure both checkouts and print the medians side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--out", default=str(HERE / "results_before_after.json"))
    args = parser.parse_args()
    sides = {"before": args.before, "after": args.after}
    bench = Bench(pin=False, reps=args.reps)
    bench.start_server()
    warm, rounds = 20, 5
    try:
        for _ in range(args.reps):
            for side, python in sides.items():
                bench.measure(f"overhead.{side}", python, "rhizome_bench.py",
                              ["overhead", str(args.calls)], latency=0,
                              expect=rounds * args.calls + warm)  # fmt: skip
            for c in (64, 256):
                for side, python in sides.items():
                    bench.measure(f"batch{c}.{side}", python, "rhizome_bench.py",
                                  ["batch", str(args.inputs), str(c)], latency=0.2,
                                  expect=2 * args.inputs)  # fmt: skip
    finally:
        bench.stop_server()
    medians: dict[str, dict[str, float]] = {}
    for key, runs in bench.runs.items():
        fields = [k for k in ("us_per_call", "req_per_s", "cpu_ms_per_request") if k in runs[0]]
        medians[key] = {k: statistics.median(r[k] for r in runs) for k in fields}
        medians[key]["load_1min"] = statistics.median(r["load_1min"] for r in runs)
    revisions = {side: _revision(python) for side, python in sides.items()}
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "revisions": revisions,
        "machine": machine(),
        "medians": medians,
        "runs": bench.runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for key in sorted(medians):
        print(key, json.dumps(medians[key]))


if __name__ == "__main__":
    main()
