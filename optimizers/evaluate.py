"""Evaluation: run a graph over a dev set concurrently and score every example.

A failed example (bad input, LM error, parse error) scores 0 and is reported;
it never stops the evaluation. The aggregate comes with a 95% confidence
interval, and scores are sliced by the examples' tags. With ``run_dir`` an
evaluation resumes through the one batch journal (:mod:`rhizome.engine.batches.journal`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Generator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rhizome.engine.example import Example, Prediction
from rhizome.optimizers.metrics import (
    Metric,
    Score,
    call_metric_scored,
    metric_name,
    metric_traces,
)
from rhizome.optimizers.records import RunRecorder

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.distributed.executor import BatchExecutor
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.trace import Trace

__all__ = (
    "JOURNAL_DIR",
    "Evaluate",
    "EvaluationResult",
    "ExampleResult",
    "ScoringSettings",
    "confidence_interval",
    "score_candidate",
)


JOURNAL_DIR = "journal"
"""The folder of an evaluation's run directory holding its batch journal."""


@dataclasses.dataclass(kw_only=True)
class ExampleResult:
    """The outcome of one example.

    Attributes:
        index: Position in the dev set.
        example: The example.
        prediction: What the graph returned, or None when it failed.
        score: The metric's score (0.0 for failures).
        passed: Whether the score reached the threshold.
        error: A description of the failure, if any.
        trace: The run's trace, if recorded.
        metric_traces: Traces of LM runs the metric made itself (an LLM judge's).
        feedback: The metric's text feedback on the whole prediction (a
            :class:`~rhizome.optimizers.metrics.Score`'s; empty for plain scores),
            or what went wrong when the example failed.
        node_feedback: The metric's feedback aimed at single nodes, by node path.
    """

    index: int
    example: Example
    prediction: Prediction | None
    score: float
    passed: bool
    error: dict[str, Any] | None = None
    trace: Trace | None = None
    metric_traces: list[Trace] = dataclasses.field(default_factory=list)
    feedback: str = ""
    node_feedback: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class EvaluationResult:
    """Aggregate and per-example results of one evaluation.

    Attributes:
        score: Mean score over all examples, failures counted as 0.
        ci95: A 95% confidence interval for ``score``.
        pass_rate: Fraction of examples that passed the threshold.
        n: Number of examples.
        failures: Number of examples that raised instead of predicting.
        slices: Per-tag ``{"score", "n"}``.
        usage: Summed over the program's traces and the metric's own LM runs
            (an LLM judge's): ``calls`` sent to a server, ``cache_hits`` served
            from the response cache, ``prompt_tokens``, ``completion_tokens``
            and ``cost`` of every reply (cached ones included), and
            ``metric_calls``, the part of ``calls`` the metric made.
        wall_time: Seconds the evaluation took.
        results: Per-example results, in dev-set order.
    """

    score: float
    ci95: tuple[float, float]
    pass_rate: float
    n: int
    failures: int
    slices: dict[str, dict[str, float]]
    usage: dict[str, float]
    wall_time: float
    results: list[ExampleResult]

    def summary(self) -> dict[str, Any]:
        """The aggregate as JSON-ready data (no per-example results)."""
        data = dataclasses.asdict(self)
        data.pop("results")
        data["ci95"] = list(self.ci95)
        return data

    def format(self) -> str:
        """A short readable report."""
        lo, hi = self.ci95
        hits = self.usage.get("cache_hits", 0)
        cached = f" (+{hits:.0f} from the cache)" if hits else ""
        lines = [
            f"score {self.score:.3f} (95% CI {lo:.3f}–{hi:.3f}) on {self.n} examples, "
            f"{self.failures} failed, {self.usage.get('calls', 0):.0f} LM calls{cached}, "
            f"{self.wall_time:.1f} s"
        ]
        for tag, s in sorted(self.slices.items()):
            lines.append(f"  {tag}: {s['score']:.3f} (n={s['n']:.0f})")
        return "\n".join(lines)


def confidence_interval(scores: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """95% interval: Wilson for 0/1 scores, normal approximation otherwise."""
    n = len(scores)
    if n == 0:
        return (0.0, 0.0)
    mean = sum(scores) / n
    if all(s in (0.0, 1.0) for s in scores):
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
        return (max(0.0, centre - half), min(1.0, centre + half))
    var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return (mean - half, mean + half)


class Evaluate:
    """Evaluate ``graph`` on ``devset`` with ``metric``; ``await`` it for the result.

    Example:
        >>> result = await Evaluate(graph, devset, exact_match(), concurrency=8)  # doctest: +SKIP
        >>> print(result.format())  # doctest: +SKIP

    Args:
        graph: The program to evaluate.
        devset: Examples (or dicts) holding the graph's inputs and the labels.
        metric: ``metric(example, prediction, trace) -> float | bool``.
        concurrency: Examples in flight at once (the LM's own limit still applies).
        threshold: Score at or above which an example passes.
        lm: Default LM for the run, if not set by context.
        progress: Show a progress bar (None: only on a terminal).
        run_dir: If given, write a run record there (config, per-example scores,
            summary) and journal every finished example in its ``journal/``
            folder (see :mod:`rhizome.engine.batches.journal`): evaluating again on the
            same directory reruns only the examples not finished without error,
            and a journal of a changed program is refused.
        executor: Where the batch runs (``rhizome.scale.RayExecutor``: a Ray
            actor pool); None runs it in this process.
    """

    def __init__(
        self,
        graph: Graph,
        devset: Sequence[Example | Mapping[str, Any]],
        metric: Metric,
        *,
        concurrency: int = 16,
        threshold: float = 1.0,
        lm: LM | None = None,
        progress: bool | None = None,
        run_dir: str | Path | None = None,
        executor: BatchExecutor | None = None,
    ) -> None:
        self.graph = graph
        self.executor = executor
        self.devset = [e if isinstance(e, Example) else Example(e) for e in devset]
        self.metric = metric
        self.concurrency = concurrency
        self.threshold = threshold
        self.lm = lm
        self.progress = progress
        self.run_dir = run_dir

    def __await__(self) -> Generator[Any, None, EvaluationResult]:
        return self.run().__await__()

    async def run(self) -> EvaluationResult:
        """Run the evaluation and return its result."""
        recorder = RunRecorder.create(self.run_dir, kind="evaluate", config=self._config())
        t0 = time.perf_counter()
        journal = None if self.run_dir is None else Path(self.run_dir) / JOURNAL_DIR
        run = self.graph.batch
        if self.executor is not None:  # the batch runs elsewhere (a Ray actor pool)
            run = partial(self.executor.batch, self.graph)
        batch = await run(
            self.devset,
            concurrency=self.concurrency,
            lm=self.lm,
            progress=self.progress,
            run_dir=journal,
        )
        results = [await self._score(b) for b in batch]
        result = _aggregate(results, time.perf_counter() - t0)
        if recorder is not None:
            recorder.write_results(results)
            recorder.finish(result.summary())
        return result

    def _config(self) -> dict[str, Any]:
        return {
            "graph": self.graph.name,
            "metric": metric_name(self.metric),
            "n": len(self.devset),
            "concurrency": self.concurrency,
            "threshold": self.threshold,
        }

    async def _score(self, batch_result: Any) -> ExampleResult:
        example = self.devset[batch_result.index]
        pred, error = batch_result.prediction, batch_result.error
        scored = Score(0.0)
        with metric_traces() as judged:
            if pred is not None:
                try:
                    scored = await call_metric_scored(
                        self.metric, example, pred, batch_result.trace
                    )
                except Exception as exc:
                    error = {"type": type(exc).__name__, "message": f"metric failed: {exc}"}
        feedback = scored.feedback
        if error is not None and not feedback:
            feedback = f"the program failed: {error.get('type')}: {error.get('message')}"
        return ExampleResult(
            index=batch_result.index,
            example=example,
            prediction=pred,
            score=scored.value,
            passed=error is None and scored.value >= self.threshold,
            error=error,
            trace=batch_result.trace,
            metric_traces=judged,
            feedback=feedback,
            node_feedback=dict(scored.node_feedback),
        )


class ScoringSettings(Protocol):
    """How an optimizer scores its candidates: its attributes of these names."""

    metric: Metric
    threshold: float
    concurrency: int
    lm: LM | None


async def score_candidate(
    program: Graph,
    examples: Sequence[Example],
    settings: ScoringSettings,
    *,
    concurrency: int | None = None,
) -> EvaluationResult:
    """Evaluate a candidate the way optimizers do: no progress bar, no run record.

    Args:
        program: The candidate graph.
        examples: The examples to score it on.
        settings: The optimizer, for its metric, threshold, LM and concurrency.
        concurrency: Examples in flight, when not the optimizer's own (trials
            run side by side share it).
    """
    return await Evaluate(
        program,
        examples,
        settings.metric,
        concurrency=settings.concurrency if concurrency is None else concurrency,
        threshold=settings.threshold,
        lm=settings.lm,
        progress=False,
        executor=getattr(settings, "executor", None),
    ).run()


def _aggregate(results: list[ExampleResult], wall_time: float) -> EvaluationResult:
    scores = [r.score for r in results]
    by_tag: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for tag in r.example.tags:
            by_tag[tag].append(r.score)
    n = len(results)
    return EvaluationResult(
        score=sum(scores) / n if n else 0.0,
        ci95=confidence_interval(scores),
        pass_rate=sum(r.passed for r in results) / n if n else 0.0,
        n=n,
        failures=sum(r.error is not None for r in results),
        slices={t: {"score": sum(v) / len(v), "n": len(v)} for t, v in by_tag.items()},
        usage=_usage(results),
        wall_time=wall_time,
        results=results,
    )


_USAGE_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost", "metric_calls")


def _usage(results: Sequence[ExampleResult]) -> dict[str, float]:
    """LM usage of the program's runs and the metric's own runs (see EvaluationResult)."""
    usage: dict[str, float] = dict.fromkeys(_USAGE_KEYS, 0) | {"cost": 0.0}
    for r in results:
        runs = [(r.trace, False)] if r.trace is not None else []
        runs += [(trace, True) for trace in r.metric_traces]
        for trace, by_metric in runs:
            totals = trace.usage()
            for key, value in totals.items():
                usage[key] = usage.get(key, 0) + value
            if by_metric:
                usage["metric_calls"] += totals["calls"]
    return usage
