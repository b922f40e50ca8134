"""JointSearch: tune every LM node's instruction and demos together with TPE.

The search builds candidates for every slot of every LM node — instructions
proposed by a prompt model (:mod:`~rhizome.optimizers.propose`) and demo sets
(as given, zero-shot, labelled, several bootstraps with different seeds),
optionally temperatures, retrieval ``k`` and the LM each node uses — and lets
hyperopt's TPE pick combinations jointly, since the best demos for one node
depend on the instruction of another.

Each trial scores its combination on a random minibatch of the validation
set; every ``full_eval_every`` trials the combination with the best mean
minibatch score is scored on the whole set, and the best full score wins. A
combination is never scored twice on the same example: trial 0 (the graph as
given) and the minibatches of the best combination count toward its full
evaluation.
Each trial also records its cost per example (tokens when the LMs have no
prices), and :attr:`JointSearch.pareto` is the score/cost front. A
:class:`~rhizome.optimizers.trials.Budget` counts every LM call of the run,
set-up included, and the search never starts work it cannot pay for.

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
from rhizome.engine.client.usage import SpendMeter, metered
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
    TPESampler,
    Trial,
    affordable,
    best_by_mean,
    budget_meter,
    config_key,
    load_trials,
    pareto_front,
    per_example_cost,
    per_example_usage,
    spent_by,
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
        budget: The most the whole run may spend (resumed parts included),
            counting every LM call it causes: building the candidates
            (bootstraps, proposals by ``prompt_lm``), trials and full
            evaluations. Trials and full evaluations it cannot pay for are not
            started (a full evaluation shrinks to the examples it can pay for);
            the call limit is never exceeded (see :class:`Budget`).
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
        spent: What the run spent (resumed parts included): ``calls`` sent to
            a server, ``cache_hits``, tokens, ``cost``, ``refused`` requests,
            and ``setup``, the part spent building the candidates.
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
        self.spent: dict[str, Any] = {}

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
        previous = load_trials(self.run_dir)
        recorder = RunRecorder.create(self.run_dir, kind="joint_search", config=self._config())
        with budget_meter(self.budget, spent_by(previous)) as meter:
            space, setup = await self._space(graph, examples, len(valset), recorder)
            self.space = space
            rows = load_trials(self.run_dir) if self.run_dir is not None else setup
            run = _Run(self, graph, valset, space, recorder, rows, meter)
            await run.search()
        self.spent = meter.snapshot() | {"setup": spent_by(run.setup)}
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
            "spent": self.spent,
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

    async def _space(
        self,
        graph: Graph,
        examples: list[Example],
        valset_size: int,
        recorder: RunRecorder | None,
    ) -> tuple[SearchSpace, list[Trial]]:
        """The search space (saved or built) and the set-up row of building it, if built."""
        settings = self._settings(valset_size)
        if self.run_dir is not None:
            saved = load_space(self.run_dir, settings, graph, num_lms=len(self.lms))
            if saved is not None:
                return saved, []
        with metered() as setup:  # nested: counted here and against the budget
            space = (await self._build_space(graph, examples)).normalized()
        row = Trial(tid=-2, kind="setup", config={}, score=0.0, cost=0.0, n=0)
        row.usage = setup.snapshot()
        if recorder is not None:  # the set-up's spend first, so a resume counts it
            recorder.append("trials.jsonl", row.to_row())
        if self.run_dir is not None and not setup.refused:  # a space cut short is not kept
            save_space(self.run_dir, settings, space)
        return space, [row]

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
    """One (possibly resumed) execution of a search: trials in rounds, then the final pick.

    Every evaluation is planned against the budget's meter before it starts:
    a round runs only the trials it can pay for, a full evaluation shrinks to
    the examples it can pay for, and a score already known for a
    configuration on an example (from an earlier trial) is reused, not paid
    for again.
    """

    def __init__(
        self,
        search: JointSearch,
        graph: Graph,
        valset: list[Example],
        space: SearchSpace,
        recorder: RunRecorder | None,
        previous: list[Trial],
        meter: SpendMeter,
    ) -> None:
        self.s = search
        self.graph = graph
        self.valset = valset
        self.space = space
        self.recorder = recorder
        self.meter = meter
        self.sampler = TPESampler(space.sizes, seed=search.seed, startup=search._startup())
        self.size = min(search.minibatch_size, len(valset))
        self.full_mode = self.size >= len(valset)
        self.trials = {t.tid: t for t in previous if t.kind == "trial"}
        self.fulls = [t for t in previous if t.kind == "full"]
        self.setup = [t for t in previous if t.kind == "setup"]
        self.known: dict[tuple[str, int], float] = {}
        self.costs: dict[str, float] = {}  # per example, from a configuration's first run
        for t in [*self.trials.values(), *self.fulls]:
            self._remember(t)
        self.prior_calls = max(1, len(list(graph.named_predictors())))
        self.cut = False

    def _remember(self, trial: Trial) -> None:
        key = config_key(trial.config)
        if trial.ran != 0:
            self.costs.setdefault(key, trial.cost)
        for index, score in zip(trial.examples, trial.scores, strict=False):
            self.known[(key, index)] = score

    async def search(self) -> None:
        s = self.s
        s.stopped = "done"
        for start in range(0, s.num_trials, s.parallel):
            end = min(start + s.parallel, s.num_trials)
            missing = [tid for tid in range(start, end) if tid not in self.trials]
            if missing and not await self._round(start, missing):
                break
            if self._checkpoint_due(start, end) and not await self._full_eval(at=end):
                break
        self._finish()

    def _stop(self) -> bool:
        self.s.stopped = "budget"
        return False

    def _per_example(self) -> dict[str, float]:
        done = [*self.trials.values(), *self.fulls]
        return per_example_usage(done, prior_calls=self.prior_calls)

    async def _round(self, start: int, missing: list[int]) -> bool:
        """Run the round's trials the budget can pay for; False when the search must stop."""
        configs: dict[int, dict[str, int]] = {}
        done = [self.trials[t] for t in sorted(self.trials) if t < start]
        for tid in missing:
            pending = [(u, self._config_of(u, configs)) for u in range(start, tid)]
            if tid == 0:
                configs[tid] = self.space.default()
            else:
                configs[tid] = await anyio.to_thread.run_sync(self.sampler.ask, tid, done, pending)
        fit = self._fitting(missing, configs)
        if fit:
            per_trial = max(1, self.s.concurrency // len(fit))
            async with anyio.create_task_group() as group:
                for tid in fit:
                    group.start_soon(self._trial, tid, configs[tid], per_trial)
        if self.cut or len(fit) < len(missing):
            return self._stop()
        return True

    def _fitting(self, missing: list[int], configs: Mapping[int, dict[str, int]]) -> list[int]:
        """The longest prefix of ``missing`` whose unscored examples the budget can pay for."""
        need = 0
        fit: list[int] = []
        for tid in missing:
            key = config_key(configs[tid])
            need += sum((key, i) not in self.known for i in self._picks(tid))
            if affordable(self.meter, need, self._per_example()) < need:
                break
            fit.append(tid)
        return fit

    def _config_of(self, tid: int, asked: Mapping[int, dict[str, int]]) -> dict[str, int]:
        return self.trials[tid].config if tid in self.trials else asked[tid]

    def _picks(self, tid: int) -> list[int]:
        picks = random.Random(f"{self.s.seed}:{tid}").sample(range(len(self.valset)), self.size)
        return sorted(picks)

    async def _trial(self, tid: int, config: dict[str, int], concurrency: int) -> None:
        trial = await self._evaluate(config, self._picks(tid), concurrency, tid=tid, kind="trial")
        if trial is not None:
            self.trials[tid] = trial

    async def _evaluate(
        self, config: dict[str, int], indices: list[int], concurrency: int, **fields: Any
    ) -> Trial | None:
        """Score ``config`` on ``indices``, reusing known scores; None when the budget cut it."""
        key = config_key(config)
        todo = [i for i in indices if (key, i) not in self.known]
        t0 = time.perf_counter()
        usage: dict[str, float] = {}
        scores = {i: self.known[(key, i)] for i in indices if (key, i) in self.known}
        if todo:
            program = self.space.apply(self.graph, config, lms=self.s.lms)
            with metered() as own:
                result = await score_candidate(
                    program, [self.valset[i] for i in todo], self.s, concurrency=concurrency
                )
            if own.refused:  # the meter refused a request: the evaluation is incomplete
                self.cut = True
                return None
            usage = dict(result.usage)
            scores.update(zip(todo, (r.score for r in result.results), strict=True))
        trial = Trial(
            config=config,
            score=sum(scores.values()) / len(indices),
            cost=per_example_cost(usage, len(todo)) if todo else self.costs.get(key, 0.0),
            n=len(indices),
            usage=usage,
            wall_time=time.perf_counter() - t0,
            examples=list(indices),
            scores=[scores[i] for i in indices],
            ran=len(todo),
            **fields,
        )
        self._remember(trial)
        if self.recorder is not None:
            self.recorder.append("trials.jsonl", trial.to_row())
        return trial

    def _checkpoint_due(self, start: int, end: int) -> bool:
        every = self.s.full_eval_every
        crossed = end // every > start // every or end == self.s.num_trials
        return crossed and not self.full_mode and not any(f.at == end for f in self.fulls)

    async def _full_eval(self, *, at: int) -> bool:
        """Score the best-by-minibatch configuration not yet fully scored, on the whole set.

        When the budget cannot pay for every example, the evaluation covers the
        examples it can pay for (known scores first), as long as that is at
        least a minibatch; otherwise it is skipped and the search stops.
        """
        scored = {config_key(f.config) for f in self.fulls}
        config = best_by_mean(list(self.trials.values()), exclude=scored)
        if config is None:
            return True
        key = config_key(config)
        known = [i for i in range(len(self.valset)) if (key, i) in self.known]
        todo = [i for i in range(len(self.valset)) if (key, i) not in self.known]
        fits = affordable(self.meter, len(todo), self._per_example())
        if len(known) + fits < self.size:
            return self._stop()
        full = await self._evaluate(
            config, sorted(known + todo[:fits]), self.s.concurrency, tid=-1, kind="full", at=at
        )
        if full is None:
            return self._stop()
        self.fulls.append(full)
        return fits == len(todo) or self._stop()

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
