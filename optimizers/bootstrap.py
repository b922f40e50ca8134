"""BootstrapFewShot: demos cut from the teacher's traces whose metric passed.

The teacher (the graph itself by default) runs over the trainset. For every
example whose final prediction passes the metric, *every* LM node takes its
demo from that same trace — its own inputs and outputs, intermediate fields
and reasoning included. Traces that fail the metric give nothing, so a node
never learns from a run that ended wrong. Extra rounds ask the LM for fresh
samples (a new sample index) rather than cached replies.

How many demos a node gets (DSPy's rule): first its bootstrapped demos, at
most ``max_bootstrapped_demos``; then labelled demos fill the remaining places
up to ``max_labeled_demos``. So ``max_labeled_demos`` is the size a node's demo
list is filled to, not a count added on top: with ``(2, 2)`` a node holds 2
demos (2 bootstrapped, or 1 bootstrapped and 1 labelled ...), with ``(2, 4)``
it holds 4, and with ``(4, 2)`` it holds its up to 4 bootstrapped demos and no
labelled one (bootstrapped demos are never dropped to make room).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.context import context
from rhizome.optimizers.base import (
    as_examples,
    check_same_shape,
    demos_from_trace,
    labeled_demos,
    shuffled,
)
from rhizome.optimizers.metrics import Metric, call_metric, metric_name
from rhizome.optimizers.records import RunRecorder

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph

__all__ = ("BootstrapFewShot", "BootstrapReport")


@dataclasses.dataclass(kw_only=True)
class BootstrapReport:
    """What a bootstrap run did: examples tried, traces kept and dropped, per round."""

    tried: int = 0
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    rounds: int = 0
    kept_indices: list[int] = dataclasses.field(default_factory=list)


class BootstrapFewShot:
    """Few-shot demos bootstrapped from successful traces.

    Args:
        metric: ``metric(example, prediction, trace) -> float | bool``.
        threshold: A trace is kept when its score is at least this.
        max_bootstrapped_demos: Most demos from successful traces, per predictor.
        max_labeled_demos: The size labelled demos fill each predictor's demo
            list up to, after its bootstrapped demos (DSPy's rule; see the
            module docstring). 0 adds no labelled demo.
        max_rounds: Passes over the trainset; each later pass draws fresh samples.
        teacher: A graph of the same shape to run instead of the student.
        concurrency: Examples in flight while bootstrapping.
        lm: Default LM for the teacher's runs.
        seed: Shuffles the trainset; the same seed gives the same demos.
        progress: Show progress (None: on a terminal only).
        run_dir: Write a run record: configuration, every teacher run kept or
            dropped with its score, the usage, and the final program.
    """

    def __init__(
        self,
        metric: Metric,
        *,
        threshold: float = 1.0,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        max_rounds: int = 1,
        teacher: Graph | None = None,
        concurrency: int = 16,
        lm: LM | None = None,
        seed: int = 0,
        progress: bool | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.metric = metric
        self.threshold = threshold
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.teacher = teacher
        self.concurrency = concurrency
        self.lm = lm
        self.seed = seed
        self.progress = progress
        self.run_dir = run_dir
        self.report = BootstrapReport()
        self._recorder: RunRecorder | None = None

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Return a copy of ``graph`` whose predictors hold bootstrapped demos."""
        examples = shuffled(as_examples(trainset), self.seed)
        student = graph.copy()
        teacher = (self.teacher or graph).copy()
        check_same_shape(student, teacher)
        paths = [p for p, _ in student.named_predictors()]
        self.report = BootstrapReport()
        self._recorder = RunRecorder.create(self.run_dir, kind="bootstrap", config=self._config())
        demos, used = await self._bootstrap(teacher, examples, paths)
        rest = [e for i, e in enumerate(examples) if i not in used]
        student.set_parameters(
            {
                f"{path}.demos": self._fill(demos[path], labeled_demos(predictor, rest))
                for path, predictor in student.named_predictors()
            }
        )
        if self._recorder is not None:
            self._recorder.write_program(student)
            self._recorder.finish(dataclasses.asdict(self.report))
        return student

    def _fill(
        self, booted: list[dict[str, Any]], labelled: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Bootstrapped demos first, then labelled ones up to ``max_labeled_demos`` in all."""
        booted = booted[: self.max_bootstrapped_demos]
        return booted + labelled[: max(0, self.max_labeled_demos - len(booted))]

    def _config(self) -> dict[str, Any]:
        return {
            "metric": metric_name(self.metric),
            "threshold": self.threshold,
            "max_bootstrapped_demos": self.max_bootstrapped_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "max_rounds": self.max_rounds,
            "seed": self.seed,
            "teacher": None if self.teacher is None else self.teacher.name,
        }

    async def _bootstrap(
        self, teacher: Graph, examples: list[Example], paths: list[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], set[int]]:
        demos: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        used: set[int] = set()
        for round_ in range(self.max_rounds):
            todo = [i for i in range(len(examples)) if i not in used]
            if self._full(demos) or not todo:
                break
            self.report.rounds += 1
            # Chunks in trainset order: stop paying for teacher runs once every
            # predictor has its demos, and keep the result independent of timing.
            step = max(2 * self.concurrency, 1)
            for start in range(0, len(todo), step):
                if self._full(demos):
                    break
                chunk = todo[start : start + step]
                await self._run_chunk(teacher, examples, chunk, round_, paths, demos, used)
        return demos, used

    async def _run_chunk(
        self,
        teacher: Graph,
        examples: list[Example],
        chunk: list[int],
        round_: int,
        paths: list[str],
        demos: dict[str, list[dict[str, Any]]],
        used: set[int],
    ) -> None:
        with context(sample=round_):
            batch = await teacher.batch(
                [examples[i] for i in chunk],
                concurrency=self.concurrency,
                lm=self.lm,
                progress=self.progress,
            )
        for index, result in zip(chunk, batch, strict=True):
            if self._full(demos):
                break
            if await self._keep(examples[index], result) and result.trace is not None:
                used.add(index)
                self.report.kept_indices.append(index)
                for path, found in demos_from_trace(result.trace, paths).items():
                    demos[path].extend(found[:1])

    async def _keep(self, example: Example, result: Any) -> bool:
        self.report.tried += 1
        if result.prediction is None or result.trace is None:
            self.report.failed += 1
            if self._recorder is not None:
                self._recorder.append(
                    "trials.jsonl", {"example": example.to_dict(), "error": result.error}
                )
            return False
        score = await call_metric(self.metric, example, result.prediction, result.trace)
        keep = score >= self.threshold
        if self._recorder is not None:
            self._recorder.append(
                "trials.jsonl",
                {
                    "example": example.to_dict(),
                    "score": score,
                    "kept": keep,
                    **result.trace.usage(),
                },
            )
        if keep:
            self.report.kept += 1
        else:
            self.report.dropped += 1
        return keep

    def _full(self, demos: dict[str, list[dict[str, Any]]]) -> bool:
        return all(len(d) >= self.max_bootstrapped_demos for d in demos.values())
