"""What a checkpoint costs per node: no checkpoint, SQLite safe/batched, JSON directory.

A chain of trivial async ``FunctionNode`` s (so the figure is the checkpoint's
cost, not the work's) runs with each store and durability; every run has a new
``run_id``, so every node is recorded. The cost per node is the slope between a
1-node and an ``--nodes``-node chain (median of ``--reps`` runs each), which
leaves the per-run cost (opening the run, the meta write) out; that is
reported apart as ``per_run_us``. Part of the slope is the program's
fingerprint, computed once per run but over every node (``fingerprint_us``:
its cost for the long chain; ``record_per_node_us``: the slope without it).
``resume`` is the cost per node of running a finished run again (every node
restored, none run). Figures are CPU time of this process (``time.process_time``),
which other processes on a busy machine do not inflate; wall time per node is
reported too (``wall_per_node_us``). SQLite runs in WAL mode with
``synchronous=NORMAL`` and the directory store flushes without ``fsync``, so
neither waits for the disk on a commit: CPU time is their cost.

    python bench/checkpoint.py --nodes 101 --reps 30 --out bench/results_checkpoint.json

The store files live in a temporary folder on the same disk as ``--tmp``
(default: the system's temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from rhizome.engine.graphs import durable
from rhizome.engine.graphs.checkpoint import DirectoryCheckpoint, SQLiteCheckpoint
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode

MODES = ("none", "sqlite-safe", "sqlite-batched", "directory-safe", "directory-batched")


async def _step(x: int) -> int:
    return x + 1


def chain(n: int) -> Graph:
    """``n`` nodes, each adding one to the previous one's output."""
    g = Graph(f"chain{n}")
    for i in range(n):
        g.add(f"n{i}", FunctionNode(_step, outputs=["x"]))
        if i:
            g.connect(f"n{i - 1}", f"n{i}")
    return g


def store_for(mode: str, folder: Path) -> Any:
    """The store a mode writes to, in ``folder`` (None for no checkpoint)."""
    if mode.startswith("sqlite"):
        return SQLiteCheckpoint(folder / "runs.sqlite")
    if mode.startswith("directory"):
        return DirectoryCheckpoint(folder / "runs")
    return None


async def timed_runs(
    graph: Graph, mode: str, store: Any, reps: int, tag: str
) -> tuple[float, float]:
    """Median seconds per run over ``reps`` runs with new ids: (CPU time, wall time)."""
    cpu, wall = [], []
    for rep in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        if store is None:
            await graph.run(x=0)
        else:
            durability = "batched" if mode.endswith("batched") else "safe"
            await graph.run(x=0, checkpoint=store, run_id=f"{tag}-{rep}", durability=durability)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return statistics.median(cpu), statistics.median(wall)


async def measure(mode: str, nodes: int, reps: int, tmp: Path) -> dict[str, Any]:
    """One mode's row: the slope per node, the per-run cost, the resume cost."""
    small, large = chain(1), chain(nodes)
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        store = store_for(mode, Path(folder))
        await timed_runs(large, mode, store, 3, "warm")  # imports, first SQLite open
        cpu1, wall1 = await timed_runs(small, mode, store, reps, "s")
        cpun, walln = await timed_runs(large, mode, store, reps, "l")
        result: dict[str, Any] = {
            "mode": mode,
            "per_node_us": (cpun - cpu1) / (nodes - 1) * 1e6,
            "per_run_us": cpu1 * 1e6,
            "wall_per_node_us": (walln - wall1) / (nodes - 1) * 1e6,
        }
        if store is not None:  # the same run ids again: every node restored
            again, _ = await timed_runs(large, mode, store, reps, "l")
            result["resume_per_node_us"] = again / nodes * 1e6
    return result


def fingerprint_us(graph: Graph, reps: int) -> float:
    """Median CPU microseconds to fingerprint ``graph`` (a checkpointed run does it once)."""
    times = []
    for _ in range(reps):
        start = time.process_time()
        durable._program(graph)
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Every mode, with the machine and its load."""
    rows = [await measure(mode, args.nodes, args.reps, Path(args.tmp)) for mode in MODES]
    base = rows[0]["per_node_us"]
    small, large = fingerprint_us(chain(1), args.reps), fingerprint_us(chain(args.nodes), args.reps)
    share = (large - small) / (args.nodes - 1)
    for row in rows:
        row["overhead_per_node_us"] = row["per_node_us"] - base
        if row["mode"] != "none":
            row["record_per_node_us"] = row["overhead_per_node_us"] - share
    return {
        "bench": "checkpoint",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg(),
        },
        "nodes": args.nodes,
        "reps": args.reps,
        "fingerprint_us": large,
        "rows": rows,
    }


def report(result: dict[str, Any]) -> str:
    """The result as a table."""
    head = ("mode", "per node", "overhead", "w/o fp", "per run", "resume/node", "wall/node")
    lines = [f"{head[0]:<18}" + "".join(f"{h:>13}" for h in head[1:])]
    for row in result["rows"]:
        cells = [
            row.get(key)
            for key in (
                "per_node_us",
                "overhead_per_node_us",
                "record_per_node_us",
                "per_run_us",
                "resume_per_node_us",
                "wall_per_node_us",
            )
        ]
        text = "".join(f"{c:>11.1f}µs" if c is not None else f"{'-':>13}" for c in cells)
        lines.append(f"{row['mode']:<18}{text}")
    lines.append(
        f"fingerprint of the {result['nodes']}-node chain: {result['fingerprint_us']:.0f}µs"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=101, help="nodes in the long chain")
    parser.add_argument("--reps", type=int, default=30, help="runs per measurement")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the stores")
    parser.add_argument("--out", help="append the result as one JSON line to this file")
    arguments = parser.parse_args()
    outcome = anyio.run(main, arguments)
    print(report(outcome))
    if arguments.out:
        with open(arguments.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(outcome) + "\n")
