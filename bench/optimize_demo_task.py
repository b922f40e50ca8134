"""Measure BootstrapFewShot, JointSearch and Reflect on the demo task with the embedded model.

Prints, for the unoptimized graph and each optimizer: the dev score, LM calls
spent optimizing and evaluating, and wall time. This is the measurement behind
the optimizers issue's closing note; it takes about half an hour on two cores.

    python bench/optimize_demo_task.py --out /tmp/opt-demo
    python bench/optimize_demo_task.py --out /tmp/opt-small --dev-size 10 --val-size 10 \
        --trials 4 --optimizers JointSearch,Reflect --reflect-iterations 3

``--optimizers`` picks which run (default: BootstrapFewShot,JointSearch);
``Reflect`` scores with :func:`multihop_feedback`, exact match plus feedback
per node, and reflects with the task model itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import anyio

from rhizome.datasets import load_multihop
from rhizome.demo import build_graph, build_index, say
from rhizome.engine.client.protocol import LM
from rhizome.engine.graphs.graph import Graph
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import Score, exact_match, score_value
from rhizome.optimizers.reflect import Reflect
from rhizome.tools.embedded.lm import local_lm


async def _dev_score(graph: Graph, dev: list[Any], lm: LM, out: Path, name: str) -> dict[str, Any]:
    result = await Evaluate(
        graph, dev, exact_match("answer"), lm=lm, concurrency=4, run_dir=out / "runs" / name
    )
    say(f"{name}: {result.format()}")
    return {"score": result.score, "ci95": result.ci95, "eval_calls": result.usage.get("calls", 0)}


def multihop_feedback(example: Any, prediction: Any, trace: Any = None) -> Score:
    """Exact match on the answer, with feedback for the node where the hops broke."""
    got = str(prediction["answer"]).strip()
    if score_value(exact_match("answer")(example, prediction, trace)) >= 1.0:
        return Score(1.0)
    query = str(trace.node("follow_up").outputs.get("query", "")) if trace is not None else ""
    if str(example["bridge"]).lower() not in query.lower():
        notes = {
            "follow_up": f"the query {query!r} should name {example['bridge']!r}, "
            "the link the first passages lead to"
        }
    else:
        notes = {"answer": f"the passages held the link; the answer is {example['answer']!r}"}
    return Score(0.0, feedback=f"expected {example['answer']!r}, got {got!r}", node_feedback=notes)


async def measure_rhizome(lm: LM, graph: Graph, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Dev score of the graph, then of what each optimizer makes of it, with the calls spent."""
    train = load_multihop("train")
    dev = load_multihop("dev")[: args.dev_size]
    val = train[80 : 80 + getattr(args, "val_size", 30)]
    chosen = getattr(args, "optimizers", "BootstrapFewShot,JointSearch").split(",")
    rows = [{"stage": "unoptimized", **await _dev_score(graph, dev, lm, args.out, "unoptimized")}]
    metric = exact_match("answer")
    optimizers: dict[str, Any] = {
        "BootstrapFewShot": BootstrapFewShot(
            metric, max_bootstrapped_demos=3, max_labeled_demos=0, concurrency=4, lm=lm,
            run_dir=args.out / "runs" / "bootstrap-opt",
        ),
        "JointSearch": JointSearch(
            metric, num_trials=args.trials, prompt_lm=lm, num_instructions=3, num_demo_sets=3,
            max_bootstrapped_demos=3, max_labeled_demos=0, minibatch_size=10, full_eval_every=6,
            parallel=2, concurrency=4, valset=val, lm=lm, seed=0,
            run_dir=args.out / "runs" / "joint-opt",
        ),
        "Reflect": Reflect(
            multihop_feedback, reflection_lm=lm, minibatch_size=3,
            max_iterations=getattr(args, "reflect_iterations", 8), concurrency=4, valset=val,
            lm=lm, seed=0, run_dir=args.out / "runs" / "reflect-opt",
        ),
    }  # fmt: skip
    for name, optimizer in optimizers.items():
        if name not in chosen:
            continue
        before = lm.usage.snapshot()["calls"]
        t0 = time.perf_counter()
        tuned = await optimizer.optimize(graph, train[:80])
        spent = {
            "opt_calls": lm.usage.snapshot()["calls"] - before,
            "opt_seconds": time.perf_counter() - t0,
        }
        if isinstance(getattr(optimizer, "spent", None), dict) and optimizer.spent:
            spent["opt_spent"] = optimizer.spent  # the optimizer's own count (set-up included)
        say(f"{name}: optimized with {spent['opt_calls']} LM calls in {spent['opt_seconds']:.0f} s")
        tuned.save(args.out / f"{name}.json")
        rows.append({"stage": name, **spent, **await _dev_score(tuned, dev, lm, args.out, name)})
    return rows


def main() -> None:
    """Run the measurement and print a JSON table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("opt-demo"))
    parser.add_argument("--dev-size", type=int, default=40)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--val-size", type=int, default=30, help="validation questions")
    parser.add_argument("--optimizers", default="BootstrapFewShot,JointSearch")
    parser.add_argument("--reflect-iterations", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    retriever = build_index(args.out)
    t0 = time.perf_counter()
    with local_lm(n_parallel=4, cache=None, log_path=args.out / "llama-server.log") as lm:
        rows = anyio.run(measure_rhizome, lm, build_graph(retriever), args)
    print(json.dumps(rows, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
