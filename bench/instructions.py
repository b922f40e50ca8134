"""Per-call cost in CPU instructions, counted by valgrind: a figure timer noise cannot move.

On a shared 2-core VM the per-call overhead in microseconds moves by tens of
microseconds between runs, because the raw floor it is measured against moves.
Counting the instructions the client process executes (user space, under
``valgrind --tool=callgrind``) gives the same comparison without that noise.

Each client runs the same measurement as ``run.py``'s overhead step
(``rhizome_bench.py overhead N``, ``dspy_bench.py overhead N``, and the raw
floor ``raw_client.py floor N``: 20 warm-up calls, then 5 rounds of N) at two
values of N; the difference divided by the extra calls is the count per call,
free of start-up and import. The mock server runs outside valgrind with
latency 0. Usage::

    python bench/instructions.py            # about 5 minutes on 2 cores
    python bench/instructions.py --no-dspy  # rhizome and the floor only

Writes ``bench/results_instructions.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
DSPY_PY = str(HERE / ".venv-dspy" / "bin" / "python")
ROUNDS = 5  # the overhead and floor scripts each run 5 rounds of N calls


def collected(python: str, script: str, args: list[str]) -> int:
    """Instructions the process executed, as callgrind reports them."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    done = subprocess.run(
        [*command, python, str(HERE / script), *args], capture_output=True, text=True, check=False
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        detail = done.stderr[-2000:]
        raise RuntimeError(f"{script} {' '.join(args)} failed under valgrind:\n{detail}")
    return int(found.group(1))


def per_call(python: str, script: str, mode: str, url: str, small: int, large: int) -> float:
    """Instructions per call: the count at ``large`` calls minus at ``small``, per extra call."""
    low = collected(python, script, [url, mode, str(small)])
    high = collected(python, script, [url, mode, str(large)])
    return (high - low) / (ROUNDS * (large - small))


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="40,140", help="the two values of N")
    parser.add_argument("--no-dspy", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results_instructions.json"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    small, large = (int(x) for x in args.calls.split(","))
    server = subprocess.Popen(
        [PY, str(HERE / "mock_server.py"), "--latency", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().split()[1]}/v1"
        sides = [("rhizome", PY, "rhizome_bench.py")]
        if not args.no_dspy:
            sides.append(("dspy", DSPY_PY, "dspy_bench.py"))
        result: dict[str, Any] = {"calls": [small, large], "command": sys.argv}
        for who, python, script in sides:
            total = per_call(python, script, "overhead", url, small, large)
            # the floor replays the last request the server saw: this client's own
            floor = per_call(PY, "raw_client.py", "floor", url, small, large)
            result[who] = {"per_call": round(total), "floor": round(floor)}
            result[who]["net"] = round(total - floor)
            print(f"{who}: {total:,.0f} instructions per call, floor {floor:,.0f}, "
                  f"net {total - floor:,.0f}", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    if "dspy" in result:
        result["dspy_over_rhizome"] = round(result["dspy"]["net"] / result["rhizome"]["net"], 2)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
