"""Trial bookkeeping for searches: budgets, the resumable trial log, Pareto fronts, TPE.

A search records every finished trial as one line of ``trials.jsonl`` in its
run directory. Re-running the search on the same directory reads those lines
back and skips the work they describe, so an interrupted run resumes where it
stopped and ends where an uninterrupted run with the same seed would.

:class:`TPESampler` drives hyperopt's TPE in ask/tell style: the caller asks
for a configuration, evaluates it however it likes (several at once), and the
finished trials are fed back on the next ask. Every ask is a pure function of
the seed, the trial id and the trials it is shown, which is what makes runs
repeatable and resumable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rhizome.engine.client.usage import SpendMeter, metered
from rhizome.engine.errors import ConfigError
from rhizome.optimizers.records import read_jsonl

__all__ = (
    "Budget",
    "ParetoPoint",
    "Spend",
    "TPESampler",
    "Trial",
    "affordable",
    "best_by_mean",
    "budget_meter",
    "config_key",
    "load_trials",
    "mean_scores",
    "pareto_front",
    "per_example_cost",
    "per_example_usage",
    "spent_by",
    "summed_usage",
)


TRIALS_FILE = "trials.jsonl"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """A hard limit on what an optimizer may spend; None means no limit on that measure.

    It counts every LM call the optimizer causes — building candidates
    (bootstraps, instruction proposals), trials, full evaluations, its own
    prompt or reflection model, an LLM judge — through one spend meter
    (:func:`~rhizome.engine.client.usage.metered`) on the one LM call path.
    ``calls`` counts requests sent to a server; replies served from the
    response cache are reported separately and cost nothing. The optimizer
    never starts work it cannot finish within the limit: it estimates a piece
    of work's calls from what earlier work cost, shrinks a full evaluation to
    the examples it can pay for (or skips it), and a request that would pass
    the call limit is refused before it is sent, so the limit is never
    exceeded at the server. A token or cost limit stops new requests once
    reached; requests already in flight may pass it by their own size.

    Attributes:
        calls: LM requests sent to a server.
        tokens: Prompt plus completion tokens.
        cost: Cost in the LMs' currency (needs prices configured on the LMs).
    """

    calls: int | None = None
    tokens: int | None = None
    cost: float | None = None

    def __post_init__(self) -> None:
        for name in ("calls", "tokens", "cost"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"Budget({name}={value}) must be at least 0 or None")

    def exceeded(self, spent: Spend) -> bool:
        """Whether ``spent`` has reached any of the limits."""
        return (
            (self.calls is not None and spent.calls >= self.calls)
            or (self.tokens is not None and spent.tokens >= self.tokens)
            or (self.cost is not None and spent.cost >= self.cost)
        )


@contextlib.contextmanager
def budget_meter(
    budget: Budget | None, spent: Mapping[str, float] | None = None
) -> Iterator[SpendMeter]:
    """A spend meter with ``budget``'s limits for an optimizer's run, ``spent`` already counted.

    ``spent`` is what an interrupted run on the same run directory spent
    before (a resume), so the limit covers the whole run.
    """
    b = budget or Budget()
    with metered(max_calls=b.calls, max_tokens=b.tokens, max_cost=b.cost) as meter:
        if spent:
            meter.preload(spent)
        yield meter


def affordable(meter: SpendMeter, n: int, per_example: Mapping[str, float]) -> int:
    """How many of ``n`` examples the meter can still pay for at ``per_example`` each.

    ``per_example`` holds the expected ``calls`` and ``tokens`` of one
    example (a measure not known yet, 0, does not limit).
    """
    fits = n
    calls = per_example.get("calls", 0)
    room = meter.room()
    if room is not None and calls > 0:
        fits = min(fits, int(room // calls))
    tokens = per_example.get("tokens", 0)
    if meter.max_tokens is not None and tokens > 0:
        fits = min(fits, int(max(0, meter.max_tokens - meter.tokens) // tokens))
    if meter.full():
        fits = 0
    return max(0, fits)


def spent_by(trials: Sequence[Trial]) -> dict[str, float]:
    """What the recorded trials (set-up rows included) spent, summed."""
    return summed_usage([t.usage for t in trials])


def summed_usage(usages: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Usages (calls, cache hits, tokens, cost) added up, in :meth:`SpendMeter.snapshot`'s keys."""
    meter = SpendMeter()
    for usage in usages:
        meter.preload(usage)
    total = meter.snapshot()
    total.pop("refused")
    return total


def per_example_usage(trials: Sequence[Trial], *, prior_calls: int) -> dict[str, float]:
    """The most calls and tokens one example took in any trial (``prior_calls`` at least)."""
    calls, tokens = float(max(1, prior_calls)), 0.0
    for t in trials:
        ran = t.n if t.ran is None else t.ran
        if ran <= 0 or t.kind == "setup":
            continue
        made = t.usage.get("calls", 0) + t.usage.get("cache_hits", 0)
        calls = max(calls, math.ceil(made / ran))
        used = t.usage.get("prompt_tokens", 0) + t.usage.get("completion_tokens", 0)
        tokens = max(tokens, math.ceil(used / ran))
    return {"calls": calls, "tokens": tokens}


@dataclasses.dataclass(kw_only=True)
class Spend:
    """Running totals of LM calls, tokens and cost."""

    calls: int = 0
    tokens: int = 0
    cost: float = 0.0

    def add(self, usage: Mapping[str, float]) -> None:
        """Add an evaluation's usage (calls, prompt and completion tokens, cost)."""
        self.calls += int(usage.get("calls", 0))
        self.tokens += int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        self.cost += float(usage.get("cost", 0.0))

    def as_dict(self) -> dict[str, float]:
        """The totals as JSON-ready data."""
        return {"calls": self.calls, "tokens": self.tokens, "cost": self.cost}


def per_example_cost(usage: Mapping[str, float], n: int) -> float:
    """The second objective: cost per example, or tokens per example when no prices are set."""
    if n <= 0:
        return 0.0
    cost = float(usage.get("cost", 0.0))
    if cost > 0:
        return cost / n
    tokens = float(usage.get("prompt_tokens", 0)) + float(usage.get("completion_tokens", 0))
    return tokens / n


@dataclasses.dataclass(kw_only=True)
class Trial:
    """One evaluation of one configuration.

    Attributes:
        tid: Trial id (position in the search); -1 for full evaluations, -2
            for set-up.
        kind: ``"trial"`` (minibatch, seen by TPE), ``"full"`` (whole
            validation set, or the part the budget paid for) or ``"setup"``
            (building the candidates: only its usage counts).
        config: Option index per search dimension.
        score: Mean metric score on the examples evaluated.
        cost: Cost (or tokens) per example.
        n: Examples evaluated.
        usage: LM calls, tokens and cost of the evaluation.
        at: For full evaluations, the number of trials finished when it ran.
        wall_time: Seconds the evaluation took.
        examples: Validation-set indices evaluated, in order.
        scores: The score of each of ``examples``.
        ran: Examples actually run (the rest reused earlier scores of the same
            configuration); None means all ``n``.
    """

    tid: int
    kind: str
    config: dict[str, int]
    score: float
    cost: float
    n: int
    usage: dict[str, float] = dataclasses.field(default_factory=dict)
    at: int = 0
    wall_time: float = 0.0
    examples: list[int] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)
    ran: int | None = None

    def to_row(self) -> dict[str, Any]:
        """The trial as one JSON-ready line."""
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Trial:
        """Read a line written by :meth:`to_row`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in row.items() if k in fields}
        data["config"] = {str(k): int(v) for k, v in dict(data.get("config", {})).items()}
        return cls(**data)


def config_key(config: Mapping[str, int]) -> str:
    """A canonical string for a configuration, to group trials of the same one."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config))


def load_trials(run_dir: Path | None) -> list[Trial]:
    """The trials recorded in ``run_dir/trials.jsonl`` (none when absent)."""
    if run_dir is None:
        return []
    return [Trial.from_row(r) for r in read_jsonl(Path(run_dir) / TRIALS_FILE)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParetoPoint:
    """A configuration on the score/cost front.

    Attributes:
        score: Its score (full evaluation when it had one, else the minibatch mean).
        cost: Its cost (or tokens) per example.
        config: Option index per dimension.
        trials: Ids of the minibatch trials that evaluated it.
    """

    score: float
    cost: float
    config: dict[str, int]
    trials: tuple[int, ...]


def pareto_front(trials: Sequence[Trial]) -> list[ParetoPoint]:
    """The configurations no other beats on both score (higher) and cost (lower).

    Sorted by cost, cheapest first.
    """
    points = _per_config(trials)
    front = [p for p in points if not any(_dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.cost, -p.score))


def _per_config(trials: Sequence[Trial]) -> list[ParetoPoint]:
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(config_key(t.config), []).append(t)
    points = []
    for group in groups.values():
        full = [t for t in group if t.kind == "full"]
        mini = [t for t in group if t.kind == "trial"]
        scored = full or mini
        points.append(
            ParetoPoint(
                score=sum(t.score for t in scored) / len(scored),
                cost=sum(t.cost for t in group) / len(group),
                config=dict(group[0].config),
                trials=tuple(t.tid for t in mini),
            )
        )
    return points


def _dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    return a.score >= b.score and a.cost <= b.cost and (a.score > b.score or a.cost < b.cost)


class TPESampler:
    """Ask hyperopt's TPE for configurations, one trial id at a time.

    Args:
        sizes: Number of options per dimension; dimensions with one option are fixed at 0.
        seed: The search seed; each ask derives its own seed from it and the trial id.
        startup: Trials drawn at random before TPE starts modelling.
    """

    def __init__(self, sizes: Mapping[str, int], *, seed: int, startup: int) -> None:
        from hyperopt import Domain, hp, tpe

        self.sizes = dict(sizes)
        self.seed = seed
        self._free = [name for name, size in self.sizes.items() if size > 1]
        space = {name: hp.choice(name, list(range(self.sizes[name]))) for name in self._free}
        self._domain = Domain(lambda _: 0.0, space) if self._free else None
        self._algo = functools.partial(tpe.suggest, n_startup_jobs=max(1, startup), verbose=False)

    def ask(
        self, tid: int, done: Sequence[Trial], pending: Sequence[tuple[int, Mapping[str, int]]]
    ) -> dict[str, int]:
        """A configuration for trial ``tid``.

        Args:
            tid: The new trial's id.
            done: Finished minibatch trials the model learns from (loss = -score).
            pending: ``(tid, config)`` of trials started but not shown as finished;
                TPE treats them as failures so that concurrent asks spread out.
        """
        config = dict.fromkeys(self.sizes, 0)
        if self._domain is None:
            return config
        trials = self._trials(done, pending)
        seed = (self.seed * 1_000_003 + tid * 7_919) % (2**31 - 1)
        docs = self._algo([tid], self._domain, trials, seed)
        for name, values in docs[0]["misc"]["vals"].items():
            if values:
                config[name] = int(values[0])
        return config

    def _trials(
        self, done: Sequence[Trial], pending: Sequence[tuple[int, Mapping[str, int]]]
    ) -> Any:
        from hyperopt import STATUS_OK, Trials
        from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW

        trials = Trials()
        docs = []
        rows = [(t.tid, t.config, -t.score) for t in done] + [(i, c, None) for i, c in pending]
        for tid, config, loss in rows:
            misc = {
                "tid": tid,
                "cmd": self._domain.cmd if self._domain is not None else None,
                "workdir": None,
                "idxs": {name: [tid] for name in self._free},
                "vals": {name: [int(config.get(name, 0))] for name in self._free},
            }
            result = {"status": "new"} if loss is None else {"status": STATUS_OK, "loss": loss}
            (doc,) = trials.new_trial_docs([tid], [None], [result], [misc])
            doc["state"] = JOB_STATE_NEW if loss is None else JOB_STATE_DONE
            docs.append(doc)
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials


def mean_scores(trials: Sequence[Trial]) -> dict[str, tuple[float, int, dict[str, int]]]:
    """Per configuration key: mean minibatch score, first trial id, and the configuration."""
    groups: dict[str, list[Trial]] = {}
    for t in sorted((t for t in trials if t.kind == "trial"), key=lambda t: t.tid):
        groups.setdefault(config_key(t.config), []).append(t)
    return {
        key: (sum(t.score for t in g) / len(g), g[0].tid, dict(g[0].config))
        for key, g in groups.items()
    }


def best_by_mean(trials: Sequence[Trial], exclude: Collection[str] = ()) -> dict[str, int] | None:
    """The configuration with the highest mean minibatch score (earliest on ties), or None."""
    ranked = [
        (score, -first, config)
        for key, (score, first, config) in mean_scores(trials).items()
        if key not in exclude
    ]
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r[0], r[1]))[2]
