"""JointSearch: tune every LM node's instruction and demos together with TPE.

The search builds candidates for every slot of every LM node — instructions
proposed by a prompt model (:mod:`~rhizome.optimizers.propose`) and demo sets
(as given, zero-shot, labelled, several bootstraps with different seeds),
optionally temperatures, retrieval ``k`` and the LM each node uses — and lets
hyperopt's TPE pick combinations jointly, since the best demos for one node
depend on the instruction of another.

Each trial scores its combination on a random minibatch of the validation
set; every ``full_eval_every`` trials the combination with the best mean
minibatch score is scored on the whole set, and the best full score wins.
Each trial also records its cost per example (tokens when the LMs have no
prices), and :attr:`JointSearch.pareto` is the score/cost front. A
:class:`~rhizome.optimizers.trials.Budget` stops the search from starting
more work once it is spent.

Trials run ``parallel`` at a time in rounds; each round is asked for from the
finished rounds only, so a run is a pure function of its seed (and the LM's
replies). Every finished trial is a line of ``trials.jsonl``; a run started on
a directory that holds one resumes: it reuses the saved search space, skips
the finished trials, and ends where an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.engine.client.options import grouped
from rhizome.engine.errors import ConfigError
from rhizome.optimizers.base import as_examples
from rhizome.optimizers.evaluate import score_candidate
from rhizome.optimizers.metrics import Metric, metric_name
from rhizome.optimizers.propose import instruction_scores, propose_instructions
from rhizome.optimizers.records import RunRecorder
from rhizome.optimizers.space import (
    SearchSpace,
    demo_candidates,
    dimension,
    load_space,
    save_space,
    scalar_dimensions,
)
from rhizome.optimizers.trials import (
    Budget,
    ParetoPoint,
    Spend,
    TPESampler,
    Trial,
    best_by_mean,
    config_key,
    load_trials,
    pareto_front,
    per_example_cost,
)

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.distributed.executor import BatchExecutor
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph

__all__ = ("JointSearch", "SearchSpaceConfig", "TrialSchedule")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpaceConfig:
    """What a :class:`JointSearch` searches: ``JointSearch(metric, space=SearchSpaceConfig(...))``.

    Attributes:
        num_instructions: Instructions proposed per node (besides its own).
        instructions: Extra candidate instructions per predictor path.
        num_demo_sets: Bootstrapped demo sets per node (besides as given,
            zero-shot and labelled).
        max_bootstrapped_demos: Most bootstrapped demos in one set.
        max_labeled_demos: Labelled demos in the labelled set; bootstrapped sets are
            filled up to this many with labelled demos.
        temperatures: Candidate temperatures per node (none: not searched).
        ks: Candidate ``k`` for nodes with a ``k`` attribute (none: not searched).
        lms: Candidate LMs per node (none: not searched).

    Raises:
        ConfigError: A count is negative, a temperature negative or a ``k`` below 1.
    """

    num_instructions: int = 5
    instructions: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    num_demo_sets: int = 4
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    temperatures: Sequence[float] = ()
    ks: Sequence[int] = ()
    lms: Sequence[LM] = ()

    def __post_init__(self) -> None:
        for name in ("num_instructions", "num_demo_sets", "max_bootstrapped_demos"):
            _check_count("SearchSpaceConfig", name, getattr(self, name), least=0)
        _check_count("SearchSpaceConfig", "max_labeled_demos", self.max_labeled_demos, least=0)
        if not isinstance(self.instructions, Mapping) or any(
            isinstance(v, str) for v in self.instructions.values()
        ):
            raise ConfigError(
                "SearchSpaceConfig(instructions=...) must map predictor paths to lists of "
                "instructions, e.g. {'answer': ['Answer briefly.']}"
            )
        bad = [t for t in self.temperatures if isinstance(t, bool) or not _number(t) or t < 0]
        if bad:
            raise ConfigError(
                f"SearchSpaceConfig(temperatures=...) must be numbers >= 0; got {bad}"
            )
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ConfigError(f"SearchSpaceConfig(ks={list(self.ks)}) must be ints >= 1")
        setattr_ = object.__setattr__  # frozen: normalize to immutable values once
        setattr_(self, "instructions", {k: tuple(v) for k, v in self.instructions.items()})
        setattr_(self, "temperatures", tuple(self.temperatures))
        setattr_(self, "ks", tuple(self.ks))
        setattr_(self, "lms", tuple(self.lms))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialSchedule:
    """How a :class:`JointSearch` runs its trials: ``trials=TrialSchedule(...)``.

    Attributes:
        num_trials: Minibatch trials to run (trial 0 is the graph as given).
        minibatch_size: Validation examples per trial.
        full_eval_every: Trials between full evaluations of the best so far.
        parallel: Trials evaluated at once (one round).
        startup_trials: Random trials before TPE models (None: a quarter, 2 to 10).

    Raises:
        ConfigError: A count is below 1 (``startup_trials`` below 0).
    """

    num_trials: int = 30
    minibatch_size: int = 25
    full_eval_every: int = 10
    parallel: int = 4
    startup_trials: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_trials", "minibatch_size", "full_eval_every", "parallel"):
            _check_count("TrialSchedule", name, getattr(self, name), least=1)
        if self.startup_trials is not None:
            _check_count("TrialSchedule", "startup_trials", self.startup_trials, least=0)


def _number(value: object) -> bool:
    return isinstance(value, (int, float))


def _check_count(owner: str, name: str, value: object, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}({name}={value!r}) must be an int")
    if value < least:
        raise ConfigError(f"{owner}({name}={value}) must be at least {least}")


class JointSearch:
    """MIPRO-style joint search over instructions, demos and more, for every LM node.

    The options come in groups — ``space=SearchSpaceConfig(...)`` (what is
    searched), ``trials=TrialSchedule(...)`` (how trials run) and
    ``budget=Budget(...)`` (when to stop) — or as the flat
    keywords of the first two, with the same defaults; a group and one of its
    own flat keywords together are refused.

    Args:
        metric: ``metric(example, prediction, trace) -> float | bool``.
        space: What is searched, as a group; or give its flat keywords below.
        trials: How trials run, as a group; or give its flat keywords below.
        num_trials: Minibatch trials to run (trial 0 is the graph as given;
            default 30).
        prompt_lm: The LM that proposes instructions; None searches demos (and
            the other slots) only.
        num_instructions: Instructions proposed per node (besides its own; default 5).
        instructions: Extra candidate instructions per predictor path.
        num_demo_sets: Bootstrapped demo sets per node (besides as given,
            zero-shot and labelled; default 4).
        max_bootstrapped_demos: Most bootstrapped demos in one set (default 4).
        max_labeled_demos: Labelled demos in the labelled set; bootstrapped
            sets are filled up to this many with labelled demos (default 4).
        temperatures: Candidate temperatures per node (none: not searched).
        ks: Candidate ``k`` for nodes with a ``k`` attribute (none: not searched).
        lms: Candidate LMs per node (none: not searched).
        minibatch_size: Validation examples per trial (default 25).
        full_eval_every: Trials between full evaluations of the best so far
            (default 10).
        parallel: Trials evaluated at once (one round; default 4).
        valset: Examples to score on (the trainset when None).
        budget: Stop starting trials and full evaluations once this much is
            spent by them, over the whole run (resumed parts included); the
            overshoot is at most one round. Building the candidates (bootstraps,
            proposals) is not counted.
        startup_trials: Random trials before TPE models (default: a quarter, 2 to 10).
        threshold: Score at or above which a bootstrap trace counts as passed.
        concurrency: Examples in flight, across the trials of a round.
        lm: Default LM for the program's runs.
        teacher: Graph to bootstrap demos with (the graph itself when None).
        seed: Makes the run repeatable.
        summarize: Let the prompt model describe the data for its proposals.
        run_dir: Run directory: space, trials (for resuming), final program.
        executor: Where candidates are evaluated (``rhizome.scale.RayExecutor``:
            a Ray actor pool); None evaluates them in this process.

    Raises:
        ConfigError: A value is out of range, or a group is given together
            with one of its flat keywords (``trials=`` and ``num_trials=``).

    Attributes:
        space: The search space (after :meth:`optimize`).
        history: Every trial, minibatch and full, in order of trial id.
        best_score: Full-evaluation score of the returned program (its mean
            minibatch score when the search stopped before any full evaluation;
            None if no trial ran).
        best_config: Option index per dimension of the returned program.
        pareto: Configurations on the score/cost front (cost: per example,
            tokens when no prices are set).
        stopped: Why the search ended: ``"done"`` or ``"budget"``.
    """

    def __init__(
        self,
        metric: Metric,
        *,
        space: SearchSpaceConfig | None = None,
        trials: TrialSchedule | None = None,
        num_trials: int | None = None,
        prompt_lm: LM | None = None,
        num_instructions: int | None = None,
        instructions: Mapping[str, Sequence[str]] | None = None,
        num_demo_sets: int | None = None,
        max_bootstrapped_demos: int | None = None,
        max_labeled_demos: int | None = None,
        temperatures: Sequence[float] | None = None,
        ks: Sequence[int] | None = None,
        lms: Sequence[LM] | None = None,
        minibatch_size: int | None = None,
        full_eval_every: int | None = None,
        parallel: int | None = None,
        valset: Sequence[Example | Mapping[str, Any]] | None = None,
        budget: Budget | None = None,
        startup_trials: int | None = None,
        threshold: float = 1.0,
        concurrency: int = 16,
        lm: LM | None = None,
        teacher: Graph | None = None,
        seed: int = 0,
        summarize: bool = True,
        run_dir: str | Path | None = None,
        executor: BatchExecutor | None = None,
    ) -> None:
        self.executor = executor
        schedule = {
            "num_trials": num_trials,
            "minibatch_size": minibatch_size,
            "full_eval_every": full_eval_every,
            "parallel": parallel,
            "startup_trials": startup_trials,
        }
        for name, value in schedule.items():  # the messages flat keywords always had
            if name != "startup_trials" and value is not None and value < 1:
                raise ConfigError(f"JointSearch({name}={value}) must be at least 1")
        self._schedule = grouped("JointSearch", "trials", trials, TrialSchedule(), schedule)
        self._space_config = grouped(
            "JointSearch",
            "space",
            space,
            SearchSpaceConfig(),
            {
                "num_instructions": num_instructions,
                "instructions": instructions,
                "num_demo_sets": num_demo_sets,
                "max_bootstrapped_demos": max_bootstrapped_demos,
                "max_labeled_demos": max_labeled_demos,
                "temperatures": temperatures,
                "ks": ks,
                "lms": lms,
            },
        )
        self.metric = metric
        self.prompt_lm = prompt_lm
        self._unpack(self._space_config, self._schedule)
        self.valset = valset
        self.budget = budget
        self.threshold = threshold
        self.concurrency = concurrency
        self.lm = lm
        self.teacher = teacher
        self.seed = seed
        self.summarize = summarize
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.space: SearchSpace | None = None
        self.history: list[Trial] = []
        self.best_score: float | None = None
        self.best_config: dict[str, int] = {}
        self.pareto: list[ParetoPoint] = []
        self.stopped = "done"

    def _unpack(self, space: SearchSpaceConfig, trials: TrialSchedule) -> None:
        """Copy the groups into the plain attributes the search reads."""
        self.num_trials = trials.num_trials
        self.minibatch_size = trials.minibatch_size
        self.full_eval_every = trials.full_eval_every
        self.parallel = trials.parallel
        self.startup_trials = trials.startup_trials
        self.num_instructions = space.num_instructions
        self.instructions = {k: list(v) for k, v in space.instructions.items()}
        self.num_demo_sets = space.num_demo_sets
        self.max_bootstrapped_demos = space.max_bootstrapped_demos
        self.max_labeled_demos = space.max_labeled_demos
        self.temperatures = list(space.temperatures)
        self.ks = list(space.ks)
        self.lms = list(space.lms)

    @property
    def space_config(self) -> SearchSpaceConfig:
        """What is searched, as given (read-only; :attr:`space` is the space built from it)."""
        return self._space_config

    @property
    def trials(self) -> TrialSchedule:
        """How trials run (read-only)."""
        return self._schedule

    # -- the search ------------------------------------------------------------

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Search and return a copy of ``graph`` set to the best configuration found."""
        examples = as_examples(trainset)
        valset = as_examples(self.valset, what="valset") if self.valset is not None else examples
        space = await self._space(graph, examples, len(valset))
        self.space = space
        recorder = RunRecorder.create(self.run_dir, kind="joint_search", config=self._config())
        run = _Run(self, graph, valset, space, recorder, load_trials(self.run_dir))
        await run.search()
        best = space.apply(graph, self.best_config, lms=self.lms)
        if recorder is not None:
            recorder.write_program(best)
            recorder.finish(self._summary(run))
        return best

    def _summary(self, run: _Run) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_config": run.space.describe(self.best_config),
            "trials": sum(t.kind == "trial" for t in self.history),
            "full_evaluations": sum(t.kind == "full" for t in self.history),
            "spent": run.spent.as_dict(),
            "stopped": self.stopped,
            "pareto": [
                {"score": p.score, "cost": p.cost, "config": run.space.describe(p.config)}
                for p in self.pareto
            ],
        }

    def _config(self) -> dict[str, Any]:
        return {
            "metric": metric_name(self.metric),
            "num_trials": self.num_trials,
            "seed": self.seed,
            "minibatch_size": self.minibatch_size,
            "full_eval_every": self.full_eval_every,
            "parallel": self.parallel,
            "budget": self.budget,
            "prompt_lm": self.prompt_lm.name if self.prompt_lm is not None else None,
            "lms": [lm.name for lm in self.lms],
        }

    def _settings(self, valset_size: int) -> dict[str, Any]:
        """What fixes a run's trajectory; a resumed run must match it."""
        return {
            "seed": self.seed,
            "minibatch_size": self.minibatch_size,
            "full_eval_every": self.full_eval_every,
            "parallel": self.parallel,
            "startup_trials": self._startup(),
            "valset_size": valset_size,
            "metric": metric_name(self.metric),
        }

    def _startup(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.num_trials // 4))

    # -- the space -------------------------------------------------------------

    async def _space(self, graph: Graph, examples: list[Example], valset_size: int) -> SearchSpace:
        settings = self._settings(valset_size)
        if self.run_dir is not None:
            saved = load_space(self.run_dir, settings, graph, num_lms=len(self.lms))
            if saved is not None:
                return saved
        space = (await self._build_space(graph, examples)).normalized()
        if self.run_dir is not None:
            save_space(self.run_dir, settings, space)
        return space

    async def _build_space(self, graph: Graph, examples: list[Example]) -> SearchSpace:
        demos = await demo_candidates(
            graph,
            examples,
            self.metric,
            num_sets=self.num_demo_sets,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            seed=self.seed,
            threshold=self.threshold,
            concurrency=self.concurrency,
            lm=self.lm,
            teacher=self.teacher,
        )
        proposed: dict[str, list[str]] = {}
        if self.prompt_lm is not None and self.num_instructions > 0:
            grounding = {p: _grounding(sets) for p, sets in demos.items()}
            proposed = await propose_instructions(
                graph,
                examples,
                prompt_lm=self.prompt_lm,
                n=self.num_instructions,
                demos=grounding,
                seed=self.seed,
                summarize=self.summarize,
                concurrency=self.concurrency,
                # Proposing again (a later optimize call): show what the last search scored.
                history=instruction_scores(self.space, self.history) if self.space else None,
            )
        dims = []
        for path, predictor in graph.named_predictors():
            texts = proposed.get(path) or [predictor.instruction]
            options = [("as given" if i == 0 else f"proposal {i}", t) for i, t in enumerate(texts)]
            options += [(f"given {i}", t) for i, t in enumerate(self.instructions.get(path, []))]
            dims.append(dimension(path, "instruction", options))
            dims.append(dimension(path, "demos", demos[path]))
        dims += scalar_dimensions(graph, temperatures=self.temperatures, ks=self.ks, lms=self.lms)
        return SearchSpace(dims)


class _Run:
    """One (possibly resumed) execution of a search: trials in rounds, then the final pick."""

    def __init__(
        self,
        search: JointSearch,
        graph: Graph,
        valset: list[Example],
        space: SearchSpace,
        recorder: RunRecorder | None,
        previous: list[Trial],
    ) -> None:
        self.s = search
        self.graph = graph
        self.valset = valset
        self.space = space
        self.recorder = recorder
        self.sampler = TPESampler(space.sizes, seed=search.seed, startup=search._startup())
        self.size = min(search.minibatch_size, len(valset))
        self.full_mode = self.size >= len(valset)
        self.trials = {t.tid: t for t in previous if t.kind == "trial"}
        self.fulls = [t for t in previous if t.kind == "full"]
        self.spent = Spend()
        for t in previous:
            self.spent.add(t.usage)

    async def search(self) -> None:
        s = self.s
        s.stopped = "done"
        for start in range(0, s.num_trials, s.parallel):
            end = min(start + s.parallel, s.num_trials)
            missing = [tid for tid in range(start, end) if tid not in self.trials]
            if missing:
                if self._over_budget():
                    break
                await self._round(start, missing)
            if self._checkpoint_due(start, end):
                if self._over_budget():
                    break
                await self._full_eval(at=end)
        self._finish()

    def _over_budget(self) -> bool:
        if self.s.budget is not None and self.s.budget.exceeded(self.spent):
            self.s.stopped = "budget"
            return True
        return False

    async def _round(self, start: int, missing: list[int]) -> None:
        configs: dict[int, dict[str, int]] = {}
        done = [self.trials[t] for t in sorted(self.trials) if t < start]
        for tid in missing:
            pending = [(u, self._config_of(u, configs)) for u in range(start, tid)]
            if tid == 0:
                configs[tid] = self.space.default()
            else:
                configs[tid] = await anyio.to_thread.run_sync(self.sampler.ask, tid, done, pending)
        per_trial = max(1, self.s.concurrency // len(missing))
        async with anyio.create_task_group() as group:
            for tid in missing:
                group.start_soon(self._trial, tid, configs[tid], per_trial)

    def _config_of(self, tid: int, asked: Mapping[int, dict[str, int]]) -> dict[str, int]:
        return self.trials[tid].config if tid in self.trials else asked[tid]

    async def _trial(self, tid: int, config: dict[str, int], concurrency: int) -> None:
        picks = random.Random(f"{self.s.seed}:{tid}").sample(range(len(self.valset)), self.size)
        batch = [self.valset[i] for i in sorted(picks)]
        trial = await self._evaluate(config, batch, concurrency, tid=tid, kind="trial")
        self.trials[tid] = trial

    async def _evaluate(
        self, config: dict[str, int], examples: list[Example], concurrency: int, **fields: Any
    ) -> Trial:
        program = self.space.apply(self.graph, config, lms=self.s.lms)
        t0 = time.perf_counter()
        result = await score_candidate(program, examples, self.s, concurrency=concurrency)
        trial = Trial(
            config=config,
            score=result.score,
            cost=per_example_cost(result.usage, result.n),
            n=result.n,
            usage=dict(result.usage),
            wall_time=time.perf_counter() - t0,
            **fields,
        )
        self.spent.add(trial.usage)
        if self.recorder is not None:
            self.recorder.append("trials.jsonl", trial.to_row())
        return trial

    def _checkpoint_due(self, start: int, end: int) -> bool:
        every = self.s.full_eval_every
        crossed = end // every > start // every or end == self.s.num_trials
        return crossed and not self.full_mode and not any(f.at == end for f in self.fulls)

    async def _full_eval(self, *, at: int) -> None:
        """Score the best-by-minibatch configuration not yet fully scored, on the whole set."""
        scored = {config_key(f.config) for f in self.fulls}
        config = best_by_mean(list(self.trials.values()), exclude=scored)
        if config is not None:
            full = await self._evaluate(
                config, self.valset, self.s.concurrency, tid=-1, kind="full", at=at
            )
            self.fulls.append(full)

    def _finish(self) -> None:
        """Pick the best: highest full score, or highest minibatch mean without full scores."""
        s = self.s
        minis = [self.trials[t] for t in sorted(self.trials)]
        s.history = minis + self.fulls
        s.pareto = pareto_front(s.history)
        if self.fulls and not self.full_mode:
            best = max(enumerate(self.fulls), key=lambda p: (p[1].score, -p[0]))[1]
            s.best_config, s.best_score = dict(best.config), best.score
            return
        config = best_by_mean(minis)
        s.best_config = config if config is not None else self.space.default()
        key = config_key(s.best_config)
        scores = [t.score for t in minis if config_key(t.config) == key]
        s.best_score = sum(scores) / len(scores) if scores else None


def _grounding(sets: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Demos to show the prompt model: the first non-empty bootstrap, else any non-empty set."""
    boots = [d for label, d in sets if label.startswith("bootstrap") and d]
    return boots[0] if boots else next((d for _, d in sets if d), [])
