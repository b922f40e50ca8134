"""The main job: a two-hop RAG graph evaluated, optimized, and evaluated again.

``rhizome demo`` runs it on the embedded defaults — the local llama.cpp model,
offline MiniLM embeddings, a chromadb index on disk and the bundled two-hop
question set — with no API key and no network.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from rhizome.datasets import load_multihop, load_multihop_corpus
from rhizome.engine.client.protocol import LM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict
from rhizome.nodes.retrieve import Retrieve
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.evaluate import Evaluate, EvaluationResult
from rhizome.optimizers.metrics import exact_match
from rhizome.tools.retrieval.retrievers import Retriever

__all__ = (
    "DemoOptions",
    "Stage",
    "build_graph",
    "build_index",
    "format_table",
    "merge_passages",
    "optimize_and_compare",
    "run_demo",
    "say",
)


def merge_passages(first: list[str], second: list[str]) -> list[str]:
    """Join the passages of both hops, first hop first."""
    return [*first, *second]


FOLLOW_UP_INSTRUCTION = (
    "Name the one thing the question still needs: the town, company, river or person "
    "mentioned in the context that leads to the answer. Reply with just that name."
)
ANSWER_INSTRUCTION = (
    "Answer the question using the passages. Reply with the answer only: a name, a place "
    "or a year, without a sentence."
)


def build_graph(
    retriever: Retriever,
    *,
    k: int = 2,
    node: type[Predict] = Predict,
    instructions: bool = True,
    max_tokens: int | None = None,
) -> Graph:
    """The two-hop RAG program: search, write a follow-up query, search again, answer.

    Hop one searches with the question itself; the model reads what it found
    and writes a query for the missing link (the bridge entity); hop two skips
    passages already found; the answerer reads both hops.

    Args:
        retriever: Where both hops search.
        k: Passages per hop.
        node: The kind of both LM nodes (``ChainOfThought`` adds reasoning).
        instructions: False leaves the signatures' own instructions, as a new user would.
        max_tokens: Completion limit of both LM nodes.
    """
    return (
        Graph("multihop_rag", outputs=["answer"])
        .add("hop1", Retrieve(retriever, k=k, query="question", output="context"))
        .add(
            "follow_up",
            node(
                "question, context: list[str] -> query",
                instruction=FOLLOW_UP_INSTRUCTION if instructions else None,
                max_tokens=max_tokens,
            ),
        )
        .add("hop2", Retrieve(retriever, k=k, query="query", output="more", exclude="context"))
        .add("merge", FunctionNode(merge_passages, outputs=["passages"]))
        .add(
            "answer",
            node(
                "passages: list[str], question -> answer",
                instruction=ANSWER_INSTRUCTION if instructions else None,
                max_tokens=max_tokens,
            ),
        )
        .connect("hop1.context", "follow_up.context")
        .connect("follow_up.query", "hop2.query")
        .connect("hop1.context", "hop2.context")
        .connect("hop1.context", "merge.first")
        .connect("hop2.more", "merge.second")
        .connect("merge.passages", "answer.passages")
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """Settings of ``rhizome demo``.

    Attributes:
        out: Directory for the index, run records and the optimized program.
        model_path: A GGUF file instead of the embedded model.
        dev_size: Dev examples evaluated before and after (0: all).
        train_size: Training examples the optimizer may use.
        demos: Bootstrapped demos per LM node.
        concurrency: Examples in flight (the local server runs this many slots).
        k: Passages per hop.
        cache: Use the persistent response cache.
    """

    out: Path = Path("rhizome-demo")
    model_path: str | None = None
    dev_size: int = 40
    train_size: int = 80
    demos: int = 3
    concurrency: int = 4
    k: int = 2
    cache: bool = False


@dataclasses.dataclass(kw_only=True)
class Stage:
    """One row of the before/after table."""

    name: str
    score: float
    ci95: tuple[float, float]
    calls: float
    tokens: float
    seconds: float


def say(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[rhizome demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _stage(name: str, result: EvaluationResult) -> Stage:
    tokens = result.usage.get("prompt_tokens", 0) + result.usage.get("completion_tokens", 0)
    return Stage(
        name=name,
        score=result.score,
        ci95=result.ci95,
        calls=result.usage.get("calls", 0),
        tokens=tokens,
        seconds=result.wall_time,
    )


def format_table(rows: list[Stage]) -> str:
    """The before/after table as aligned text."""
    head = f"{'stage':<22}{'score':>8}{'95% CI':>16}{'LM calls':>10}{'tokens':>10}{'time':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"{r.ci95[0]:.2f}–{r.ci95[1]:.2f}"
        lines.append(
            f"{r.name:<22}{r.score:>8.3f}{ci:>16}{r.calls:>10.0f}{r.tokens:>10.0f}{r.seconds:>8.0f}s"
        )
    return "\n".join(lines)


def build_index(out: Path) -> Any:
    """Index the bundled corpus into chromadb under ``out`` (re-runs add nothing)."""
    from rhizome.tools.retrieval.chroma import ChromaRetriever
    from rhizome.tools.retrieval.indexing import index_documents

    retriever = ChromaRetriever("multihop", path=out / "index")
    stats = index_documents(retriever, load_multihop_corpus(), progress=True)
    say(f"index: {stats.chunks} passages ({stats.added} new) in {out / 'index'}")
    return retriever


async def optimize_and_compare(lm: LM, retriever: Retriever, options: DemoOptions) -> list[Stage]:
    """Evaluate on dev, bootstrap demos on train, evaluate again, save the program."""
    graph = build_graph(retriever, k=options.k)
    dev = load_multihop("dev")[: options.dev_size or None]
    train = load_multihop("train")[: options.train_size]
    metric = exact_match("answer")
    say(f"evaluating the unoptimized graph on {len(dev)} dev questions")
    before = await _evaluate(graph, dev, lm, options, "before")
    say(f"before: {before.format()}")
    say(f"optimizing: BootstrapFewShot over {len(train)} training questions")
    t0 = time.perf_counter()
    optimizer = BootstrapFewShot(
        metric,
        max_bootstrapped_demos=options.demos,
        max_labeled_demos=0,
        concurrency=options.concurrency,
        lm=lm,
        progress=True,
    )
    optimized = await optimizer.optimize(graph, train)
    report = optimizer.report
    elapsed = time.perf_counter() - t0
    say(f"bootstrap kept {report.kept} passing traces, dropped {report.dropped} ({elapsed:.0f} s)")
    program = options.out / "optimized_program.json"
    optimized.save(program)
    say(f"saved the optimized program to {program}")
    after = await _evaluate(optimized, dev, lm, options, "after")
    say(f"after: {after.format()}")
    return [_stage("unoptimized", before), _stage("BootstrapFewShot", after)]


async def _evaluate(
    graph: Graph, dev: list[Any], lm: LM, options: DemoOptions, name: str
) -> EvaluationResult:
    return await Evaluate(
        graph,
        dev,
        exact_match("answer"),
        lm=lm,
        concurrency=options.concurrency,
        progress=True,
        run_dir=options.out / "runs" / name,
    )


def run_demo(options: DemoOptions) -> list[Stage]:
    """Run the whole main job and print the before/after table on stdout."""
    from rhizome.tools.embedded.lm import local_lm

    t0 = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    say("building the retrieval index (offline MiniLM embeddings, chromadb on disk)")
    retriever = build_index(options.out)
    say("starting the embedded model (llama.cpp on 127.0.0.1)")
    with local_lm(
        options.model_path,
        n_parallel=options.concurrency,
        cache="default" if options.cache else None,
        log_path=options.out / "llama-server.log",
    ) as lm:
        say(f"model ready: {lm.name}")
        rows = anyio.run(optimize_and_compare, lm, retriever, options)
    print(format_table(rows))
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; records in {options.out / 'runs'}")
    return rows
