"""Optimizer cost on the demo task: rhizome's optimizers next to DSPy's, same LM, data, metric.

One process starts the embedded model (llama.cpp, 4 parallel slots, response
cache off), indexes the demo corpus, and then runs, one after the other so
neither competes with the other for the two cores:

1. rhizome: the two-hop RAG graph of ``rhizome demo``, evaluated on the first
   40 dev questions, optimized with ``BootstrapFewShot`` and ``JointSearch``
   (the settings of ``optimize_demo_task.py``; ``--optimizers`` adds
   ``Reflect``, scored with feedback per node), each evaluated again;
2. DSPy 3.4.1 (``bench/dspy_optimize.py`` in ``bench/.venv-dspy``): the same
   program written as a ``dspy.Module``, evaluated, optimized with
   ``BootstrapFewShotWithRandomSearch`` and ``MIPROv2(auto="light")``, each
   evaluated again.

Both use the same server, the same training (first 80), validation (next 30)
and dev questions, the same retriever and literally the same metric: DSPy's
program calls this process over HTTP for retrieval (``POST /search``, a
rhizome ``Retrieve`` node over the same chromadb index) and for scoring
(``POST /score``, rhizome's ``exact_match``). Usage::

    python bench/optimizer_cost.py --out /tmp/optcost    # about an hour on 2 cores

It writes ``bench/results_optimizers.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from rhizome.datasets import load_multihop
from rhizome.demo import build_graph, build_index, say
from rhizome.engine.client.protocol import LM
from rhizome.engine.example import Example
from rhizome.nodes.retrieve import Retrieve
from rhizome.optimizers.metrics import exact_match
from rhizome.tools.embedded.lm import local_lm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from optimize_demo_task import measure_rhizome  # noqa: E402

DSPY_PYTHON = HERE / ".venv-dspy" / "bin" / "python"


class ToolServer:
    """``POST /search`` and ``POST /score`` over HTTP/1.1, for the DSPy process."""

    def __init__(self, retriever: Any, examples: list[Example]) -> None:
        self.hop = Retrieve(retriever, k=2, query="query", output="passages", exclude="exclude")
        self.metric = exact_match("answer")
        self.examples = {str(e.id): e for e in examples}
        self.port = 0
        self.counts = {"search": 0, "score": 0}

    async def serve(self, task_status: anyio.abc.TaskStatus[int]) -> None:
        """Listen on a free loopback port; report it through ``task_status``."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(self.port)
        await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await _receive(stream)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = await _receive(stream)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                status, payload = await self._answer(lines[0], body)
                data = json.dumps(payload).encode()
                await stream.send(
                    b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (status, len(data), data)
                )

    async def _answer(self, request_line: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            ask = json.loads(body or b"{}")
            if " /search " in request_line:
                self.counts["search"] += 1
                self.hop.k = int(ask.get("k", 2))
                found = await self.hop.forward(
                    query=str(ask["query"]), exclude=list(ask.get("exclude") or [])
                )
                return 200, {"passages": found["passages"]}
            if " /score " in request_line:
                self.counts["score"] += 1
                example = self.examples[str(ask["id"])]
                ok = self.metric(example, {"answer": str(ask.get("answer") or "")})
                return 200, {"ok": bool(ok)}
            return 404, {"error": f"no such endpoint: {request_line}"}
        except Exception as exc:  # reported to the DSPy side, which records it
            return 400, {"error": f"{type(exc).__name__}: {exc}"}


async def _receive(stream: anyio.abc.SocketStream) -> bytes:
    try:
        return await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


def _rows(examples: list[Example]) -> list[dict[str, str]]:
    return [{"id": str(e.id), "question": e.question, "answer": e.answer} for e in examples]


async def measure(lm: LM, retriever: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Both frameworks, one after the other, against the same server (saved after each)."""
    train, dev = load_multihop("train"), load_multihop("dev")[: args.dev_size]
    result: dict[str, Any] = {}
    if "rhizome" in args.sides:
        say("rhizome: evaluate, BootstrapFewShot, JointSearch")
        result["rhizome"] = await measure_rhizome(lm, build_graph(retriever), args)
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    if "dspy" in args.sides:
        data = args.out / "data.json"
        splits = {"train": train[:80], "val": train[80:110], "dev": dev}
        data.write_text(json.dumps({k: _rows(v) for k, v in splits.items()}))
        tools = ToolServer(retriever, [*train, *dev])
        async with anyio.create_task_group() as tg:
            port = await tg.start(tools.serve)
            result["dspy"] = await _run_dspy(lm, port, data, args)
            tg.cancel_scope.cancel()
        result["dspy"]["tool_requests"] = tools.counts
    return result


async def _run_dspy(lm: LM, port: int, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    say(f"DSPy: evaluate, {args.dspy_optimizers} (output in {args.out / 'dspy.log'})")
    command = [
        str(DSPY_PYTHON), str(HERE / "dspy_optimize.py"),
        "--lm-url", lm.base_url, "--model", lm.name, "--tools-url", f"http://127.0.0.1:{port}",
        "--data", str(data), "--out", str(args.out), "--threads", "4",
        "--optimizers", args.dspy_optimizers, "--candidates", str(args.candidates),
        "--minibatch", "10", "--seed", "0", "--budget-s", str(args.dspy_budget_s),
        *(["--max-tokens", str(args.dspy_max_tokens)] if args.dspy_max_tokens else []),
    ]  # fmt: skip
    with (args.out / "dspy.log").open("wb") as log:
        done = await anyio.run_process(command, stderr=log, check=False)
    lines = [x for x in done.stdout.decode().splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the DSPy side failed (exit {done.returncode}); see dspy.log")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def table(result: dict[str, Any]) -> str:
    """The side-by-side table in Markdown."""
    out = [
        "| framework | stage | dev EM | LM calls to optimize | optimize wall time |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for side in ("rhizome", "dspy"):
        block = result.get(side) or {}
        rows = block if isinstance(block, list) else block.get("rows", [])
        for row in rows:
            if "error" in row:
                out.append(f"| {side} | {row['stage']} | failed: {row['error'][:60]} | | |")
                continue
            calls = f"{row['opt_calls']:,}" if "opt_calls" in row else "–"
            wall = f"{row['opt_seconds']:.0f} s" if "opt_seconds" in row else "–"
            out.append(f"| {side} | {row['stage']} | {row['score']:.3f} | {calls} | {wall} |")
    return "\n".join(out)


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("optcost"))
    parser.add_argument("--dev-size", type=int, default=40)
    parser.add_argument("--trials", type=int, default=12, help="JointSearch trials")
    parser.add_argument("--val-size", type=int, default=30, help="rhizome validation questions")
    parser.add_argument(
        "--optimizers", default="BootstrapFewShot,JointSearch", help="rhizome: which optimizers"
    )
    parser.add_argument("--reflect-iterations", type=int, default=8, help="Reflect steps at most")
    parser.add_argument("--candidates", type=int, default=4, help="DSPy random-search programs")
    parser.add_argument("--sides", default="rhizome,dspy")
    parser.add_argument("--dspy-optimizers", default="bfrs,mipro")
    parser.add_argument(
        "--dspy-max-tokens", type=int, default=0, help="cap DSPy's replies (0: DSPy's default)"
    )
    parser.add_argument(
        "--dspy-budget-s", type=int, default=0, help="stop DSPy's stage running after this long"
    )
    parser.add_argument("--save", type=Path, default=HERE / "results_optimizers.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    retriever = build_index(args.out)
    t0 = time.perf_counter()
    with local_lm(n_parallel=4, cache=None, log_path=args.out / "llama-server.log") as lm:
        result = anyio.run(measure, lm, retriever, args)
    result["total_seconds"] = time.perf_counter() - t0
    result["machine"] = {"python": platform.python_version(), "cpus": _cpus()}
    saved = json.loads(args.save.read_text()) if args.save.exists() else {}
    merged = merge(saved, result, "python " + " ".join(sys.argv))
    args.save.write_text(json.dumps(merged, indent=2) + "\n")
    print(table(merged))
    print(f"this run: {result['total_seconds']:.0f} s; raw figures in {args.save}")


def merge(saved: dict[str, Any], new: dict[str, Any], command: str) -> dict[str, Any]:
    """``saved`` with the sides and DSPy stages this run measured replaced by ``new``'s.

    Runs of one side or one DSPy optimizer add to the results file instead of
    erasing the rest. Every row records the command line that produced it.
    """
    out = dict(saved)
    out["machine"] = new["machine"]
    if "rhizome" in new:
        out["rhizome"] = [{**row, "command": command} for row in new["rhizome"]]
    if "dspy" in new:
        block = {k: v for k, v in new["dspy"].items() if k != "rows"}
        fresh = {row["stage"]: {**row, "command": command} for row in new["dspy"]["rows"]}
        fresh = {stage: row for stage, row in fresh.items() if not _not_run(row)}
        kept = [r for r in (saved.get("dspy") or {}).get("rows", []) if r["stage"] not in fresh]
        order = {"unoptimized": 0, "BootstrapFewShotWithRandomSearch": 1, "MIPROv2(light)": 2}
        block["rows"] = sorted([*kept, *fresh.values()], key=lambda r: order.get(r["stage"], 9))
        out["dspy"] = block
    return out


def _not_run(row: dict[str, Any]) -> bool:
    return str(row.get("error", "")).startswith("not run")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
