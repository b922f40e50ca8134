"""Replies cut by the length limit: the demo's two-hop RAG graph on the embedded model.

The demo task's graph (``rhizome.demo.build_graph``) with both LM nodes as
``ChainOfThought`` (``--graph demo``: ``Predict``, as the demo has them) and a
small completion limit (``max_tokens=200`` by default), run over the first dev
questions with the response cache off. ``--plain`` leaves the signatures' own
instructions; ``--adapter`` forces a reply protocol. Counts, from the client's
own history (every request the server answered):

- requests and replies cut by the limit (``finish_reason == "length"``);
- examples that failed outright (the batch's error column);
- completion tokens, wall time and exact match.

    python bench/truncation.py --n 30 --max-tokens 200 --out /tmp/trunc

Writes one JSON object per run to ``--out/truncation.json`` (appended) and
prints it; ``bench/README.md`` lists the runs behind its figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import anyio

from rhizome.datasets import load_multihop
from rhizome.demo import build_graph, build_index
from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes import predict as predict_module
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.optimizers.metrics import exact_match
from rhizome.tools.embedded.lm import local_lm


async def measure(lm: Any, graph: Graph, dev: list[Any]) -> dict[str, Any]:
    """Run ``graph`` over ``dev`` and count cut replies, failures, tokens and score."""
    metric = exact_match("answer")
    start = time.perf_counter()
    results = await graph.batch(dev, lm=lm, concurrency=4)
    seconds = time.perf_counter() - start
    history = lm.inspect_history(100_000)
    cut = sum(
        1
        for entry in history
        if entry.response is not None
        for choice in entry.response.choices
        if choice.finish_reason == "length"
    )
    failed = [r for r in results if getattr(r, "error", None)]
    scores = []
    for example, result in zip(dev, results, strict=True):
        prediction = getattr(result, "prediction", None)
        scores.append(0.0 if prediction is None else float(metric(example, prediction)))
    usage = lm.usage.snapshot()
    return {
        "examples": len(dev),
        "requests": len(history),
        "cut_by_length": cut,
        "failed_examples": len(failed),
        "first_errors": [str(r.error)[:200] for r in failed[:3]],
        "completion_tokens": usage.get("completion_tokens"),
        "exact_match": sum(scores) / len(scores),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    """Parse arguments, run once, append the figures to the output file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("trunc-bench"))
    parser.add_argument("--n", type=int, default=30, help="dev questions")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--label", default="")
    parser.add_argument("--plain", action="store_true", help="the signatures' own instructions")
    parser.add_argument("--adapter", choices=["auto", "json", "text"], default="auto")
    parser.add_argument(
        "--graph", choices=["cot", "demo"], default="cot", help="demo: rhizome demo's Predict graph"
    )
    parser.add_argument("--reasoning-desc", default=None, help="override ChainOfThought's")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    retriever = build_index(args.out)
    dev = load_multihop("dev")[: args.n]
    if args.reasoning_desc is not None:
        predict_module.REASONING_DESC = args.reasoning_desc  # read when a node is built
    graph = build_graph(
        retriever,
        node=ChainOfThought if args.graph == "cot" else Predict,
        instructions=not args.plain,
        max_tokens=args.max_tokens,
    )
    if args.adapter != "auto":
        chosen = JSONAdapter() if args.adapter == "json" else TextAdapter()
        for name in ("follow_up", "answer"):
            graph.nodes[name].predictor.adapter = chosen
    with local_lm(cache=None, log_path=args.out / "llama-server.log") as lm:
        row = anyio.run(measure, lm, graph, dev)
    row = {
        "label": args.label,
        "max_tokens": args.max_tokens,
        "graph": args.graph,
        "plain": args.plain,
        "adapter": args.adapter,
        "reasoning_desc": predict_module.REASONING_DESC,
        **row,
    }
    print(json.dumps(row, indent=2))
    with (args.out / "truncation.json").open("a") as out:
        out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
