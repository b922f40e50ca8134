"""RandomSearch: try several few-shot programs and keep the one that scores best.

The candidates are the graph zero-shot, with labelled demos only, with
bootstrapped demos, and ``num_candidates`` more bootstraps, each shuffling the
trainset with its own seed and keeping a random number of demos. Each is
scored on the validation set; the leaderboard says how each did.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import ConfigError
from rhizome.optimizers.base import as_examples
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.evaluate import score_candidate
from rhizome.optimizers.labeled import LabeledFewShot
from rhizome.optimizers.metrics import Metric, metric_name
from rhizome.optimizers.records import RunRecorder

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph

__all__ = ("Candidate", "RandomSearch")


@dataclasses.dataclass(kw_only=True)
class Candidate:
    """One program tried by :class:`RandomSearch`.

    Attributes:
        index: Position in the order tried.
        description: How it was made (``"zero-shot"``, ``"bootstrap seed=3, 2 demos"``).
        score: Validation score.
        demos: Number of demos per predictor path.
        usage: LM calls, tokens and cost of scoring it.
        program: The candidate graph.
    """

    index: int
    description: str
    score: float
    demos: dict[str, int]
    usage: dict[str, float]
    program: Graph


class RandomSearch:
    """Score zero-shot, labelled and several bootstrapped programs; return the best.

    Args:
        metric: ``metric(example, prediction, trace) -> float | bool``.
        num_candidates: Extra bootstraps with random seeds and sizes.
        max_bootstrapped_demos: Most bootstrapped demos per predictor.
        max_labeled_demos: Labelled demos per predictor in the labelled
            candidate; in a bootstrapped one, labelled demos fill each
            predictor's demos up to this many.
        valset: Examples to score on (the trainset when None, which favours
            programs that memorise it).
        threshold: Score at or above which an example passes.
        teacher: Graph to bootstrap with (the graph itself when None).
        max_rounds: Bootstrap passes over the trainset.
        concurrency: Examples in flight.
        lm: Default LM for the runs.
        seed: Makes the candidates repeatable.
        run_dir: Write a run record (one line per candidate, the final program).

    Attributes:
        leaderboard: ``(score, description)`` per candidate, best first (ties in order tried).
        candidates: Every :class:`Candidate`, in order tried.
    """

    def __init__(
        self,
        metric: Metric,
        *,
        num_candidates: int = 8,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        valset: Sequence[Example | Mapping[str, Any]] | None = None,
        threshold: float = 1.0,
        teacher: Graph | None = None,
        max_rounds: int = 1,
        concurrency: int = 16,
        lm: LM | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
    ) -> None:
        if num_candidates < 0:
            raise ConfigError(f"RandomSearch(num_candidates={num_candidates}) must be at least 0")
        self.metric = metric
        self.num_candidates = num_candidates
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.valset = valset
        self.threshold = threshold
        self.teacher = teacher
        self.max_rounds = max_rounds
        self.concurrency = concurrency
        self.lm = lm
        self.seed = seed
        self.run_dir = run_dir
        self.candidates: list[Candidate] = []
        self.leaderboard: list[tuple[float, str]] = []

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Return a copy of the best-scoring candidate program."""
        examples = as_examples(trainset)
        valset = as_examples(self.valset, what="valset") if self.valset is not None else examples
        recorder = RunRecorder.create(self.run_dir, kind="random_search", config=self._config())
        self.candidates = []
        for description, make in self._plans():
            program = await make(graph, examples)
            await self._score(description, program, valset, recorder)
        ranked = sorted(self.candidates, key=lambda c: (-c.score, c.index))
        self.leaderboard = [(c.score, c.description) for c in ranked]
        best = ranked[0].program
        if recorder is not None:
            recorder.write_program(best)
            recorder.finish({"best_score": ranked[0].score, "leaderboard": self.leaderboard})
        return best

    def _plans(self) -> list[tuple[str, Any]]:
        """``(description, async make(graph, trainset) -> Graph)`` for each candidate."""
        plans: list[tuple[str, Any]] = [
            ("zero-shot", _zero_shot),
            (
                f"labelled, {self.max_labeled_demos} demos",
                LabeledFewShot(self.max_labeled_demos, seed=self.seed).optimize,
            ),
            (
                f"bootstrap seed={self.seed}, up to {self.max_bootstrapped_demos} demos",
                self._bootstrap(self.seed, self.max_bootstrapped_demos).optimize,
            ),
        ]
        rng = random.Random(self.seed)
        for i in range(self.num_candidates):
            seed = self.seed + 1 + i
            size = rng.randint(1, max(1, self.max_bootstrapped_demos))
            plans.append(
                (f"bootstrap seed={seed}, up to {size} demos", self._bootstrap(seed, size).optimize)
            )
        return plans

    def _bootstrap(self, seed: int, size: int) -> BootstrapFewShot:
        return BootstrapFewShot(
            self.metric,
            threshold=self.threshold,
            max_bootstrapped_demos=size,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            teacher=self.teacher,
            concurrency=self.concurrency,
            lm=self.lm,
            seed=seed,
            progress=False,
        )

    async def _score(
        self, description: str, program: Graph, valset: list[Example], recorder: RunRecorder | None
    ) -> None:
        t0 = time.perf_counter()
        result = await score_candidate(program, valset, self)
        candidate = Candidate(
            index=len(self.candidates),
            description=description,
            score=result.score,
            demos={p: len(pr.demos) for p, pr in program.named_predictors()},
            usage=dict(result.usage),
            program=program,
        )
        self.candidates.append(candidate)
        if recorder is not None:
            recorder.append(
                "trials.jsonl",
                {
                    "index": candidate.index,
                    "description": description,
                    "score": result.score,
                    "ci95": list(result.ci95),
                    "demos": candidate.demos,
                    "usage": candidate.usage,
                    "wall_time": time.perf_counter() - t0,
                },
            )

    def _config(self) -> dict[str, Any]:
        return {
            "metric": metric_name(self.metric),
            "num_candidates": self.num_candidates,
            "max_bootstrapped_demos": self.max_bootstrapped_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "threshold": self.threshold,
            "seed": self.seed,
        }


async def _zero_shot(graph: Graph, trainset: Sequence[Example]) -> Graph:
    return graph.with_parameters({f"{path}.demos": [] for path, _ in graph.named_predictors()})
