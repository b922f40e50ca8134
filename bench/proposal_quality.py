"""How good are the instructions a prompt model proposes? Judged by the dev score they reach.

For each LM node of the demo graph (``follow_up`` and ``answer``), the prompt
model proposes ``--proposals`` instructions with the grounding JointSearch gives
it (data summary, graph and node description, bootstrapped demos, a tip). Each
candidate is then scored on ``--dev-size`` dev questions with the other node
left as it is, next to the signature's default instruction (what a new user
has) and the hand-written instruction of ``rhizome demo``. The task LM is the
embedded model; the prompt model is the embedded model too unless
``--prompt-model PATH.gguf`` names another GGUF.

    RHIZOME_CACHE_DIR=/work/rhizome-cache python bench/proposal_quality.py --out /tmp/propq

Prints a JSON table: per node and candidate, the dev exact match with its 95%
interval, whether the proposal was usable, its length and text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import anyio

from rhizome.datasets import load_multihop
from rhizome.demo import ANSWER_INSTRUCTION, FOLLOW_UP_INSTRUCTION, build_graph, build_index, say
from rhizome.engine.client.protocol import LM
from rhizome.engine.graphs.graph import Graph
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.propose import propose_instructions
from rhizome.tools.embedded.lm import local_lm

HAND_WRITTEN = {"follow_up": FOLLOW_UP_INSTRUCTION, "answer": ANSWER_INSTRUCTION}


async def score(graph: Graph, dev: list[Any], lm: LM) -> dict[str, Any]:
    """Dev exact match of ``graph`` with its interval and the LM calls it took."""
    result = await Evaluate(graph, dev, exact_match("answer"), lm=lm, concurrency=2, progress=False)
    return {"score": result.score, "ci95": list(result.ci95), "calls": result.usage.get("calls")}


async def measure(task_lm: LM, prompt_lm: LM, args: argparse.Namespace) -> dict[str, Any]:
    """Propose for both LM nodes, then score every candidate on dev."""
    retriever = build_index(args.out)
    graph = build_graph(retriever, instructions=False)
    train = load_multihop("train")
    dev = load_multihop("dev")[: args.dev_size]
    booted = await BootstrapFewShot(
        exact_match("answer"), max_bootstrapped_demos=2, max_labeled_demos=0, lm=task_lm,
        concurrency=2, progress=False,
    ).optimize(graph, train[:30])  # fmt: skip
    demos = {path: list(p.demos) for path, p in booted.named_predictors()}
    t0 = time.perf_counter()
    proposed = await propose_instructions(
        graph, train[:40], prompt_lm=prompt_lm, n=args.proposals, demos=demos, seed=0,
        concurrency=2,
    )  # fmt: skip
    propose_seconds = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    base = await score(graph, dev, task_lm)
    for path, texts in proposed.items():
        rows.append({"node": path, "candidate": "signature default", **base, "text": texts[0]})
        hand = graph.with_parameters({f"{path}.instruction": HAND_WRITTEN[path]})
        rows.append(
            {"node": path, "candidate": "hand-written", **await score(hand, dev, task_lm),
             "text": HAND_WRITTEN[path]}
        )  # fmt: skip
        for i, text in enumerate(texts[1:], 1):
            trial = graph.with_parameters({f"{path}.instruction": text})
            row = {"node": path, "candidate": f"proposal {i}", **await score(trial, dev, task_lm)}
            rows.append({**row, "words": len(text.split()), "text": text})
            say(f"{path} proposal {i}: {row['score']:.3f} | {text[:120]!r}")
        asked = args.proposals
        rows.append({"node": path, "usable_proposals": f"{len(texts) - 1} of {asked}"})
    return {"propose_seconds": propose_seconds, "rows": rows}


def main() -> None:
    """Run the measurement and print a JSON table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("proposal-quality"))
    parser.add_argument("--dev-size", type=int, default=15)
    parser.add_argument("--proposals", type=int, default=3)
    parser.add_argument("--prompt-model", default=None, help="a GGUF file for the prompt model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        task_lm = stack.enter_context(local_lm(n_parallel=2, log_path=args.out / "task.log"))
        prompt_lm = task_lm
        if args.prompt_model is not None:
            prompt_lm = stack.enter_context(
                local_lm(args.prompt_model, n_parallel=2, log_path=args.out / "prompt.log")
            )
        result = anyio.run(measure, task_lm, prompt_lm, args)
    result["total_seconds"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2)
    (args.out / "proposal_quality.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
