"""``rhizome run``, ``rhizome batch`` and ``rhizome inspect``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.cli.common import (
    RAW,
    CommandError,
    Sub,
    add_lm,
    add_otel,
    add_program,
    format_value,
    last_trace_path,
    load_graph,
    open_lm,
    open_telemetry,
    parse_inputs,
    positive,
    print_json,
    read_examples,
    require_lm,
)
from rhizome.cli.live import run_live
from rhizome.cli.results import ResultsFile, journal_dir
from rhizome.cli.scale import add_ray, batch_on_ray
from rhizome.engine.errors import ConfigError
from rhizome.engine.trace import Trace, jsonable
from rhizome.inspection import format_call
from rhizome.serving.schema import check_inputs
from rhizome.telemetry import request_models

if TYPE_CHECKING:
    from rhizome.engine.batches.batch import BatchResult
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph
    from rhizome.telemetry import Telemetry

__all__ = ("add_parsers", "cmd_batch", "cmd_inspect", "cmd_run")


RUN_HELP = """\
Run the program once on one set of inputs and print its outputs. The run's
trace is kept for `rhizome inspect`.

example:
  rhizome run rhizome.examples:build --input '{"question": "What is the capital of France?"}' \\
      --base-url http://localhost:8000/v1 --model my-model
  rhizome run rhizome.examples:build -p runs/qa/program.json --input @question.json --json
  rhizome run rhizome.examples:build --local --stream -i '{"question": "Why is the sky blue?"}'
"""

BATCH_HELP = """\
Run the program on every line of a JSONL file, writing one JSON line per example
as it finishes: {"index", "inputs", "outputs", "error", "usage"}. With --out, the
batch also keeps a journal in OUT.journal/ (the one run_dir journal that
graph.batch and evaluations use): re-running the same command resumes, skipping
examples that finished without error (failed ones are retried); a journal of a
changed program or changed data is refused. The finished file is sorted by index.

With --ray [ADDRESS] the batch runs on a Ray cluster (a local one without an
address): each line also names the Ray node that ran it ("node").

example:
  rhizome batch rhizome.examples:build questions.jsonl --out results.jsonl --concurrency 8
  rhizome batch myapp:build questions.jsonl -o results.jsonl --base-url http://host:8000/v1 \\
      --model m --ray auto --actors 8
"""

INSPECT_HELP = """\
Show the last LM calls: the messages sent and the replies. Reads the trace of
the last `rhizome run`, a trace JSON file, or a run directory's traces.jsonl.

example:
  rhizome inspect
  rhizome inspect runs/qa/before -n 3
"""


def add_parsers(sub: Sub) -> None:
    """Register ``run``, ``batch`` and ``inspect``."""
    p = sub.add_parser("run", help="run a program once", description=RUN_HELP, formatter_class=RAW)
    add_program(p)
    p.add_argument("-i", "--input", required=True, help="inputs as JSON, @file.json, or - (stdin)")
    p.add_argument("--json", action="store_true", help="print outputs, usage and latency as JSON")
    p.add_argument("--trace", action="store_true", help="print the run's trace on stderr")
    p.add_argument(
        "--stream",
        action="store_true",
        help="print each output field's tokens live on stderr as the LM writes them "
        "(and retries, tool calls); the outputs still come on stdout at the end",
    )
    add_lm(p)
    add_otel(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "batch", help="run a program over a JSONL file", description=BATCH_HELP, formatter_class=RAW
    )
    add_program(p)
    p.add_argument("data", type=Path, metavar="DATA.jsonl", help="one JSON object of inputs a line")
    p.add_argument("-o", "--out", type=Path, help="results file (JSONL; stdout when omitted)")
    p.add_argument("-c", "--concurrency", type=positive, default=8, help="examples in flight")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_lm(p)
    add_otel(p)
    add_ray(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser(
        "inspect",
        help="show the last prompts and replies",
        description=INSPECT_HELP,
        formatter_class=RAW,
    )
    p.add_argument("source", nargs="?", type=Path, help="trace file or run directory")
    p.add_argument("-n", type=positive, default=1, help="how many LM calls (latest last)")
    p.add_argument("--json", action="store_true", help="print the calls as JSON")
    p.set_defaults(func=cmd_inspect)


# ---- run ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``rhizome run``."""
    graph = load_graph(args)
    inputs = check_inputs(graph, parse_inputs(args.input))
    trace = Trace()
    with open_lm(args) as lm, open_telemetry(args) as telemetry:
        require_lm(graph, lm)
        start = time.perf_counter()
        try:
            run = functools.partial(telemetry.run, graph, inputs, lm=lm, trace=trace)
            if args.stream:
                run = functools.partial(run_live, run, sys.stderr)
            prediction = anyio.run(run)
        finally:
            _keep_trace(trace)
            if args.trace:
                print(trace.format(), file=sys.stderr)
    outputs = dict(prediction)
    if args.json:
        usage = trace.usage()
        print_json({"outputs": outputs, "usage": usage, "latency": time.perf_counter() - start})
    else:
        for name, value in outputs.items():
            print(f"{name}: {format_value(value)}")
    return 0


def _keep_trace(trace: Trace) -> None:
    path = last_trace_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(trace.to_json(), encoding="utf-8")
    except OSError as exc:  # keeping the trace is a convenience, never a failure
        print(f"rhizome: note: could not keep the trace in {path}: {exc}", file=sys.stderr)


# ---- batch -------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace) -> int:
    """``rhizome batch``."""
    graph = load_graph(args)
    if args.ray is not None:
        _batch_summary(args, batch_on_ray(args, graph), len(read_examples(args.data)))
        return 0
    examples = read_examples(args.data)
    names = list(graph.inputs)
    inputs = [jsonable(e.inputs(names)) for e in examples]
    journal = journal_dir(args.out)
    if journal is not None and args.overwrite:
        shutil.rmtree(journal, ignore_errors=True)
    results = ResultsFile(args.out)
    counts = {"ran": 0, "ok": 0, "failed": 0, "skipped": 0}
    with open_lm(args) as lm, open_telemetry(args) as telemetry:
        require_lm(graph, lm)
        job = _BatchJob(
            graph=graph, lm=lm, telemetry=telemetry, results=results, counts=counts, inputs=inputs
        )
        try:
            anyio.run(job.run, examples, journal, args)
        except ConfigError as exc:  # the journal belongs to another program or other data
            hint = "use a new --out, or --overwrite to start over"
            raise CommandError(str(exc), hint=hint) from None
    results.finish()
    _batch_summary(args, counts, len(examples))
    return 0


@dataclasses.dataclass(kw_only=True)
class _BatchJob:
    graph: Graph
    lm: LM | None
    telemetry: Telemetry
    results: ResultsFile
    counts: dict[str, int]
    inputs: list[dict[str, Any]]

    async def run(
        self, examples: list[Any], journal: Path | None, args: argparse.Namespace
    ) -> None:
        progress = False if args.quiet else None
        stream = self.graph.stream(
            examples, concurrency=args.concurrency, lm=self.lm, progress=progress, run_dir=journal
        )
        async with contextlib.aclosing(stream):
            async for result in stream:
                self._keep(result)

    def _keep(self, result: BatchResult) -> None:
        self.results.write(_row(result.index, self.inputs[result.index], result))
        if result.resumed:
            self.counts["skipped"] += 1
            return
        if result.trace is not None:
            models = request_models(self.graph, self.lm)
            self.telemetry.emit(self.graph.name, result.trace, request_models=models)
        self.counts["ran"] += 1
        self.counts["ok" if result.ok else "failed"] += 1


def _row(index: int, inputs: dict[str, Any], result: BatchResult) -> dict[str, Any]:
    return {
        "index": index,
        "inputs": inputs,
        "outputs": jsonable(dict(result.prediction)) if result.prediction is not None else None,
        "error": result.error,
        "usage": result.trace.usage() if result.trace is not None else {},
    }


def _batch_summary(args: argparse.Namespace, counts: dict[str, int], total: int) -> None:
    where = str(args.out) if args.out else "stdout"
    summary = {**counts, "total": total, "out": where}
    if args.json and args.out:
        print_json(summary)
    else:
        print(
            f"batch: {counts['ran']} ran ({counts['ok']} ok, {counts['failed']} failed), "
            f"{counts['skipped']} already done; results in {where}",
            file=sys.stderr,
        )
    if counts["failed"]:
        raise CommandError(
            f"{counts['failed']} of {total} examples failed; see the 'error' field in {where}",
            hint="fix the cause and run the same command again: only failed lines re-run",
        )


# ---- inspect -----------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    """``rhizome inspect``."""
    source = args.source or last_trace_path()
    calls = _calls_in(source)[-args.n :]
    if not calls:
        raise CommandError(f"no LM calls recorded in {source}")
    if args.json:
        print_json(calls)
        return 0
    for call in calls:
        print(format_call(call))
    return 0


def _calls_in(source: Path) -> list[dict[str, Any]]:
    if source.is_dir():
        traces_file = source / "traces.jsonl"
        if not traces_file.is_file():
            raise CommandError(
                f"{source} holds no traces.jsonl",
                hint="evaluations write traces into their run directory",
            )
        traces = [_json(line, traces_file).get("trace", {}) for line in _lines(traces_file)]
    elif source.is_file():
        traces = [_json(source.read_text(encoding="utf-8"), source)]
    else:
        raise CommandError(f"no trace at {source}", hint="run `rhizome run ...` first")
    return [
        {"node": r.get("node", "?"), "kind": r.get("kind", "?"), **call}
        for t in traces
        for r in t.get("records", [])
        for call in r.get("calls", [])
    ]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json(text: str, where: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise CommandError(f"{where} is not a trace (not valid JSON)") from None
    if not isinstance(value, dict):
        raise CommandError(f"{where} is not a trace (not a JSON object)")
    return value
