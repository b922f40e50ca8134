"""Reflect: evolve a program's instructions (and other slots) from what went wrong in its traces.

GEPA-style reflective optimization for whole graphs. The search keeps a pool
of candidate programs, each a set of parameter changes to the graph it was
given, scored on every validation example. Each iteration:

1. draws a parent from the per-example Pareto front of the pool (candidates
   best on at least one validation example, drawn in proportion to how many),
   so a program that solves one hard example survives beside the best average;
2. runs the parent on a minibatch of the trainset, recording traces;
3. picks one LM node — the one the metric's per-node feedback blames most on
   the failing examples, else the next in round-robin order;
4. shows a reflection LM (any LM; a larger one than the task's helps) that
   node's inputs, outputs and feedback from each example's trace, and takes
   its new instruction, plus any new values for the other slots it was offered
   (the node's temperature and demos, retrieval ``k``);
5. runs the child on the same minibatch and, if it scores higher, on the
   validation set, adding it to the pool.

With ``merge=True``, every other iteration first tries to combine two front
candidates that changed different nodes. Every program change goes through
:meth:`Graph.with_parameters`. A :class:`~rhizome.optimizers.trials.Budget`
counts every LM call (reflection included) and ``max_metric_calls`` every
example scored; an iteration starts only when the budget can pay for all of
it. Each finished step is a line of ``trials.jsonl``; a run started on the
same directory replays them and continues where the first stopped.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.client.usage import SpendMeter, metered
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError
from rhizome.optimizers.base import as_examples
from rhizome.optimizers.evaluate import EvaluationResult, score_candidate
from rhizome.optimizers.metrics import Metric, metric_name
from rhizome.optimizers.records import RunRecorder, read_jsonl
from rhizome.optimizers.reflection import (
    blamed_node,
    demo_pool,
    dossier,
    echoed,
    offered_slots,
    pareto_front_of,
    read_settings,
    reflection_inputs,
    reflector,
    weighted_pick,
)
from rhizome.optimizers.trials import Budget, budget_meter, summed_usage

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph

__all__ = ("GEPA", "Candidate", "Reflect")


LOG = "trials.jsonl"
SLOTS = ("instruction", "demos", "temperature", "k")


@dataclasses.dataclass(kw_only=True)
class Candidate:
    """One program of the pool.

    Attributes:
        changes: Parameter changes to the graph given (``{"answer.instruction": ...}``).
        scores: Its score on each validation example.
        parent: The pool index of the candidate it came from (None for the
            graph as given; a merge names its first parent).
        node: The predictor path whose instruction changed ("" for the seed,
            "merge" for a merge).
        iteration: The iteration that made it (-1 for the seed).
    """

    changes: dict[str, Any]
    scores: list[float]
    parent: int | None = None
    node: str = ""
    iteration: int = -1

    @property
    def score(self) -> float:
        """Mean validation score."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


class Reflect:
    """Reflective prompt evolution over a Pareto pool of programs (GEPA for graphs).

    Args:
        metric: ``metric(example, prediction, trace)``; return a
            :class:`~rhizome.optimizers.metrics.Score` with ``feedback`` (and
            ``node_feedback`` per node path) to tell the reflection LM what
            went wrong — plain scores work, with less to learn from.
        reflection_lm: The LM that reads the traces and writes instructions
            (the program's ``lm`` when None). A model well above 0.5B
            parameters writes far better instructions.
        budget: The most the run may spend, counting every LM call it causes
            (the program's, the metric's, the reflection LM's).
        max_metric_calls: The most examples scored (rollouts), seed included.
        max_iterations: Reflection (and merge) steps at most.
        minibatch_size: Trainset examples each step runs parent and child on.
        valset: Examples that decide the pool and the winner (the trainset when None).
        slots: What the reflection may change: ``"instruction"`` always, and
            any of ``"demos"`` (how many labelled demos a node shows),
            ``"temperature"``, ``"k"`` (retrieval nodes).
        max_demos: The most demos the reflection may give a node (from the
            minibatch's passing traces first, then labelled from the trainset).
        select: ``"blame"`` (the node the feedback names, else round-robin)
            or ``"round_robin"``.
        merge: Also try merging two candidates that changed different nodes.
        threshold: Score at or above which an example counts as solved.
        concurrency: Examples in flight while scoring.
        lm: Default LM for the program's runs.
        seed: Makes the run repeatable (parents, minibatches, merges).
        run_dir: Run directory: every step (for resuming) and the final program.

    Attributes:
        candidates: The pool, seed first.
        front: Pool indices on the per-example Pareto front, with how many
            validation examples each is best on.
        best_score: Mean validation score of the returned program.
        best_index: Its index in :attr:`candidates`.
        steps: One record per finished step, as written to ``trials.jsonl``.
        stopped: ``"done"`` or ``"budget"``.
        spent: What the run spent (resumed parts included): ``calls`` sent to
            a server, ``cache_hits``, tokens, ``cost``, ``refused`` and
            ``metric_calls``.
    """

    def __init__(
        self,
        metric: Metric,
        *,
        reflection_lm: LM | None = None,
        budget: Budget | None = None,
        max_metric_calls: int | None = None,
        max_iterations: int = 20,
        minibatch_size: int = 3,
        valset: Sequence[Example | Mapping[str, Any]] | None = None,
        slots: Sequence[str] = SLOTS,
        max_demos: int = 4,
        select: str = "blame",
        merge: bool = False,
        threshold: float = 1.0,
        concurrency: int = 8,
        lm: LM | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
    ) -> None:
        bad = [s for s in slots if s not in SLOTS]
        if bad:
            raise ConfigError(f"Reflect(slots=...) has unknown slots {bad}; choose from {SLOTS}")
        if select not in ("blame", "round_robin"):
            raise ConfigError(f"Reflect(select={select!r}) must be 'blame' or 'round_robin'")
        for name, value in (("max_iterations", max_iterations), ("minibatch_size", minibatch_size)):
            if value < 1:
                raise ConfigError(f"Reflect({name}={value}) must be at least 1")
        self.metric = metric
        self.reflection_lm = reflection_lm
        self.budget = budget
        self.max_metric_calls = max_metric_calls
        self.max_iterations = max_iterations
        self.minibatch_size = minibatch_size
        self.valset = valset
        self.slots = tuple(slots)
        self.max_demos = max_demos
        self.select = select
        self.merge = merge
        self.threshold = threshold
        self.concurrency = concurrency
        self.lm = lm
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.candidates: list[Candidate] = []
        self.front: dict[int, int] = {}
        self.best_score: float | None = None
        self.best_index = 0
        self.steps: list[dict[str, Any]] = []
        self.stopped = "done"
        self.spent: dict[str, Any] = {}

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Evolve and return a copy of ``graph`` with the best candidate's changes."""
        train = as_examples(trainset)
        val = as_examples(self.valset, what="valset") if self.valset is not None else train
        rows = read_jsonl(self.run_dir / LOG) if self.run_dir is not None else []
        _check_settings(rows, self._settings(len(val)))
        recorder = RunRecorder.create(self.run_dir, kind="reflect", config=self._config())
        if recorder is not None and rows:
            recorder.keep_rows(LOG, rows)
        spent = summed_usage([r.get("usage", {}) for r in rows])
        with budget_meter(self.budget, spent) as meter:
            run = _Run(self, graph, train, val, recorder, meter)
            run.replay(rows)
            await run.search()
        self.spent = meter.snapshot() | {"metric_calls": run.metric_calls}
        best = graph.with_parameters(self.candidates[self.best_index].changes)
        if recorder is not None:
            recorder.write_program(best)
            recorder.finish(self._summary())
        return best

    def _settings(self, valset_size: int) -> dict[str, Any]:
        """What fixes a run's trajectory; a resumed run must match it."""
        return {
            "seed": self.seed,
            "minibatch_size": self.minibatch_size,
            "valset_size": valset_size,
            "slots": list(self.slots),
            "select": self.select,
            "merge": self.merge,
            "metric": metric_name(self.metric),
        }

    def _config(self) -> dict[str, Any]:
        return {
            "metric": metric_name(self.metric),
            "reflection_lm": None if self.reflection_lm is None else self.reflection_lm.name,
            "budget": self.budget,
            "max_metric_calls": self.max_metric_calls,
            "max_iterations": self.max_iterations,
            "minibatch_size": self.minibatch_size,
            "slots": list(self.slots),
            "merge": self.merge,
            "seed": self.seed,
        }

    def _summary(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_index": self.best_index,
            "best_changes": self.candidates[self.best_index].changes,
            "candidates": len(self.candidates),
            "front": {str(k): v for k, v in self.front.items()},
            "steps": len(self.steps),
            "accepted": sum(bool(s.get("accepted")) for s in self.steps),
            "spent": self.spent,
            "stopped": self.stopped,
        }


GEPA = Reflect
"""Another name for :class:`Reflect` (the method it follows)."""


def _check_settings(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> None:
    seed = next((r for r in rows if r.get("kind") == "seed"), None)
    if seed is not None and seed.get("settings") != dict(settings):
        raise ConfigError(
            f"the run directory holds a Reflect run with other settings ({seed.get('settings')}); "
            f"this one has {dict(settings)}. Use a fresh run_dir, or the same settings to resume"
        )


class _Run:
    """One (possibly resumed) execution of a Reflect search."""

    def __init__(
        self,
        search: Reflect,
        graph: Graph,
        train: list[Example],
        val: list[Example],
        recorder: RunRecorder | None,
        meter: SpendMeter,
    ) -> None:
        self.s = search
        self.graph = graph
        self.train = train
        self.val = val
        self.recorder = recorder
        self.meter = meter
        self.paths = [p for p, _ in graph.named_predictors()]
        if not self.paths:
            raise ConfigError(f"graph {graph.name!r} has no LM node for Reflect to improve")
        self.size = min(search.minibatch_size, len(train))
        self.metric_calls = 0
        # What one example (and one reflection) costs, learned as the run goes.
        self.rates = {"calls": float(len(self.paths)), "tokens": 0.0, "reflect": 1.0}
        self.merged: set[str] = set()
        self.next = 0
        search.candidates, search.steps, search.stopped = [], [], "done"

    # -- replaying a run directory -------------------------------------------

    def replay(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Take over the finished steps of an earlier run on the same directory."""
        for row in rows:
            self._apply(row)

    def _apply(self, row: Mapping[str, Any]) -> None:
        self.metric_calls += int(row.get("metric_calls", 0))
        self.rates.update(row.get("rates", {}))
        if row.get("pair"):
            self.merged.add(str(row["pair"]))
        if row.get("candidate"):
            self.s.candidates.append(Candidate(**row["candidate"]))
        if row.get("kind") != "seed":
            self.s.steps.append(dict(row))
            self.next = int(row["iteration"]) + 1

    def _record(self, row: dict[str, Any]) -> None:
        row["rates"] = dict(self.rates)
        self._apply(row)
        if self.recorder is not None:
            self.recorder.append(LOG, row)

    # -- the search --------------------------------------------------------------

    async def search(self) -> None:
        s = self.s
        if not s.candidates and not await self._seed():
            self._finish()
            return
        for it in range(self.next, s.max_iterations):
            if not await self._step(it):
                s.stopped = "budget"
                break
        self._finish()

    async def _seed(self) -> bool:
        if not self._can_pay(len(self.val), 0):
            self.s.stopped = "budget"
            return False
        with metered() as own:
            result = await self._score({}, self.val)
        if result is None:
            self.s.stopped = "budget"
            return False
        scores = [r.score for r in result.results]
        self._record(
            {
                "kind": "seed",
                "settings": self.s._settings(len(self.val)),
                "candidate": dataclasses.asdict(Candidate(changes={}, scores=scores)),
                "metric_calls": len(self.val),
                "usage": own.snapshot(),
            }
        )
        return True

    async def _step(self, it: int) -> bool:
        """One reflection (or merge) step; False when the budget cannot pay for it."""
        rng = random.Random(f"{self.s.seed}:{it}")
        pair = self._merge_pair() if self.s.merge and it % 2 == 1 else None
        # Paid for in full before it starts: a merge scores the validation set
        # once; a reflection two minibatches, one reflection and the validation set.
        if pair is not None and not self._can_pay(len(self.val), 0):
            return False
        if pair is None and not self._can_pay(2 * self.size + len(self.val), 1):
            return False
        with metered() as own:
            if pair is not None:
                row = await self._merge(it, pair, rng)
            else:
                row = await self._reflect(it, rng)
        if row is None or own.refused:
            return False
        row.update(iteration=it, usage=own.snapshot(), **_headline(row))
        self._record(row)
        return True

    def _can_pay(self, examples: int, reflections: int) -> bool:
        limit = self.s.max_metric_calls
        if limit is not None and self.metric_calls + examples > limit:
            return False
        calls = examples * self.rates["calls"] + reflections * self.rates["reflect"]
        room = self.meter.room()
        if room is not None and calls > room:
            return False
        tokens = examples * self.rates["tokens"]
        cap = self.meter.max_tokens
        return not self.meter.full() and (cap is None or self.meter.tokens + tokens <= cap)

    async def _score(
        self, changes: Mapping[str, Any], examples: Sequence[Example]
    ) -> EvaluationResult | None:
        """Score a candidate; None when the budget refused a request on the way."""
        program = self.graph.with_parameters(changes)
        with metered() as own:
            result = await score_candidate(program, list(examples), self.s)
        if own.refused:
            return None
        made = own.calls + own.cache_hits
        self.rates["calls"] = max(self.rates["calls"], -(-made // max(1, len(examples))))
        used = -(-own.tokens // max(1, len(examples)))
        self.rates["tokens"] = max(self.rates["tokens"], float(used))
        return result

    async def _reflect(self, it: int, rng: random.Random) -> dict[str, Any] | None:
        s = self.s
        parent = weighted_pick(self._front(), rng)
        batch = sorted(rng.sample(range(len(self.train)), self.size))
        examples = [self.train[i] for i in batch]
        changes = s.candidates[parent].changes
        ran = await self._score(changes, examples)
        if ran is None:
            return None
        row: dict[str, Any] = {"kind": "reflect", "parent": parent, "minibatch": batch}
        row["parent_scores"] = [r.score for r in ran.results]
        row["metric_calls"] = len(batch)
        if all(r.score >= s.threshold for r in ran.results):
            return row | {"node": None, "accepted": False, "note": "parent solved the minibatch"}
        node = self._node(ran)
        proposal = await self._propose(it, changes, node, ran, row)
        if proposal is None:
            return None
        row.update(node=node, proposal=proposal)
        current = self.graph.with_parameters(changes).named_parameters()
        if all(current.get(name) == value for name, value in proposal.items()):
            return row | {"accepted": False, "note": "the reflection changed nothing"}
        child = changes | proposal
        if any(c.changes == child for c in s.candidates):
            return row | {"accepted": False, "note": "the child is already in the pool"}
        tried = await self._score(child, examples)
        if tried is None:
            return None
        row["child_scores"] = [r.score for r in tried.results]
        row["metric_calls"] += len(batch)
        row["accepted"] = sum(row["child_scores"]) > sum(row["parent_scores"])
        if row["accepted"]:
            full = await self._score(child, self.val)
            if full is None:
                return None
            row["metric_calls"] += len(self.val)
            scores = [r.score for r in full.results]
            row["candidate"] = dataclasses.asdict(
                Candidate(changes=child, scores=scores, parent=parent, node=node, iteration=it)
            )
        return row

    def _node(self, ran: EvaluationResult) -> str:
        if self.s.select == "blame":
            blamed = blamed_node(ran.results, self.paths, self.s.threshold)
            if blamed is not None:
                return blamed
        turn = sum(1 for st in self.s.steps if st.get("kind") == "reflect")
        return self.paths[turn % len(self.paths)]

    async def _propose(
        self,
        it: int,
        changes: Mapping[str, Any],
        node: str,
        ran: EvaluationResult,
        row: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The reflection LM's changes for ``node`` (its instruction at least); None if refused.

        What the reflection LM answered goes into ``row["reflection"]`` as it came.
        """
        s = self.s
        program = self.graph.with_parameters(changes)
        instruction = dict(program.named_predictors())[node].instruction
        demos = demo_pool(
            program, node, ran.results, self.train, threshold=s.threshold, limit=s.max_demos
        )
        offered = offered_slots(program, node, s.slots, max_demos=len(demos))
        inputs = reflection_inputs(program, node, instruction, dossier(ran.results, node), offered)
        lm = s.reflection_lm or s.lm
        with metered() as own:
            try:
                with context(sample=it):
                    reply = await reflector().run(inputs, lm=lm)
            except Exception:  # a failed reflection only costs this step
                reply = None
        if own.refused:
            return None
        self.rates["reflect"] = max(self.rates["reflect"], float(own.calls + own.cache_hits))
        text = str(reply.get("new_instruction", "")).strip() if reply is not None else ""
        settings = str(reply.get("settings", "")) if reply is not None else ""
        row["reflection"] = {"new_instruction": text, "settings": settings}
        if echoed(text, inputs):  # no instruction in it: keep the current one
            text = instruction
        proposal: dict[str, Any] = {f"{node}.instruction": text}
        proposal |= read_settings(settings, offered, demos=demos)
        return proposal

    # -- merging -----------------------------------------------------------------

    def _merge_pair(self) -> tuple[int, int] | None:
        """Two front candidates that changed different nodes, not merged before."""
        pool = self.s.candidates
        ranked = sorted(self._front(), key=lambda c: (-pool[c].score, c))
        for i, a in enumerate(ranked):
            for b in ranked[i + 1 :]:
                if f"{a},{b}" not in self.merged and _merged(pool[a], pool[b]) is not None:
                    return a, b
        return None

    async def _merge(
        self, it: int, pair: tuple[int, int], rng: random.Random
    ) -> dict[str, Any] | None:
        a, b = (self.s.candidates[i] for i in pair)
        changes = _merged(a, b) or {}
        batch = sorted(rng.sample(range(len(self.val)), min(self.size, len(self.val))))
        ran = await self._score(changes, [self.val[i] for i in batch])
        if ran is None:
            return None
        row: dict[str, Any] = {"kind": "merge", "pair": f"{pair[0]},{pair[1]}", "node": "merge"}
        row["minibatch"], row["metric_calls"] = batch, len(batch)
        row["child_scores"] = [r.score for r in ran.results]
        bar = max(sum(a.scores[i] for i in batch), sum(b.scores[i] for i in batch))
        row["accepted"] = sum(row["child_scores"]) >= bar
        if row["accepted"]:
            rest = [i for i in range(len(self.val)) if i not in batch]
            full = await self._score(changes, [self.val[i] for i in rest])
            if full is None:
                return None
            row["metric_calls"] += len(rest)
            known = dict(zip(batch, row["child_scores"], strict=True))
            known |= dict(zip(rest, (r.score for r in full.results), strict=True))
            row["candidate"] = dataclasses.asdict(
                Candidate(
                    changes=changes,
                    scores=[known[i] for i in range(len(self.val))],
                    parent=pair[0],
                    node="merge",
                    iteration=it,
                )
            )
        return row

    # -- the pick ----------------------------------------------------------------

    def _front(self) -> dict[int, int]:
        return pareto_front_of([c.scores for c in self.s.candidates])

    def _finish(self) -> None:
        s = self.s
        if not s.candidates:  # not even the seed could be paid for
            s.candidates = [Candidate(changes={}, scores=[])]
            s.best_index, s.best_score, s.front = 0, None, {}
            return
        s.front = self._front()
        s.best_index = max(range(len(s.candidates)), key=lambda c: (s.candidates[c].score, -c))
        s.best_score = s.candidates[s.best_index].score


def _headline(row: Mapping[str, Any]) -> dict[str, Any]:
    """A step's score (the child's on the minibatch, else the parent's) and a label, for reports."""
    scores = row.get("child_scores") or row.get("parent_scores") or [0.0]
    what = row.get("note") or ("accepted" if row.get("accepted") else "rejected")
    changed = ", ".join(sorted(row.get("proposal") or {})) or row.get("pair", "")
    return {
        "score": sum(scores) / len(scores),
        "description": f"{row['kind']} {row.get('node') or ''} {changed}: {what}".strip(),
    }


def _merged(a: Candidate, b: Candidate) -> dict[str, Any] | None:
    """Both candidates' changes together, when each changed nodes the other did not."""
    common = {k: v for k, v in a.changes.items() if b.changes.get(k, _MISSING) == v}
    only_a = {k: v for k, v in a.changes.items() if k not in common}
    only_b = {k: v for k, v in b.changes.items() if k not in common}
    nodes_a = {k.rsplit(".", 1)[0] for k in only_a}
    nodes_b = {k.rsplit(".", 1)[0] for k in only_b}
    if not only_a or not only_b or nodes_a & nodes_b:
        return None
    return common | only_a | only_b


_MISSING = object()
