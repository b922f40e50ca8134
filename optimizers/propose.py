"""Instruction proposal: a prompt model writes candidate instructions for each LM node.

Each proposal is grounded, as in MIPROv2, in: where the node sits in the
graph (the whole program, the node's signature, what feeds each input and what
each output feeds), what the data looks like (a statistical summary of the
trainset, plus an LM-written one when asked), demos that worked (bootstrapped
or labelled), the instructions tried for the node before with the score each
reached (when proposing again), and a "tip" (be concise, describe the
procedure, warn about mistakes ...) drawn per node from a seeded rotation, so
the proposals differ from each other.

The prompt model is driven by small graphs of its own (one Predict node each),
so its calls go through the one LM call path: traced, cached, limited and
counted like any other run. The prompt model may be a different (larger) LM
than the one the program runs on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.engine.call.parsing import format_value
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.base import as_examples, labeled_demos, shuffled
from rhizome.optimizers.describe import describe_data, describe_graph, describe_node
from rhizome.optimizers.evaluate import score_candidate
from rhizome.optimizers.metrics import Metric, metric_name
from rhizome.optimizers.records import RunRecorder

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.optimizers.space import SearchSpace
    from rhizome.optimizers.trials import Trial

__all__ = (
    "COPRO",
    "format_attempts",
    "format_demos",
    "format_history",
    "improver",
    "instruction_scores",
    "propose_instructions",
    "propose_one",
    "summarize_data",
    "usable_instruction",
)


TIPS = (
    "",
    "Be concise: keep only what the model must know.",
    "Be specific about what a good value of each output field looks like.",
    "Describe, step by step, the procedure an expert would follow.",
    "Name the mistakes most likely on this data and say how to avoid them.",
    "Give the model a role: say who it is and what it cares about.",
    "Be creative: frame the task in an unusual way that still helps.",
)

PROPOSE_INSTRUCTION = (
    "You write the instruction for one step of a program made of language-model calls. "
    "Read how the program is wired, the step's inputs and outputs and where they come "
    "from and go to, a summary of the data, and examples of the step working well. "
    "Earlier instructions for the step, if any, are listed with the score the program "
    "reached with each, worst first: do better than the best of them. Then write a new "
    "instruction for this step that will make it produce better outputs. Follow the tip "
    "if one is given. Write only the instruction itself."
)
PROPOSE_SIGNATURE = (
    "program, step, data_summary, examples, current_instruction, earlier_instructions, tip "
    "-> proposed_instruction"
)
NO_HISTORY = "(none yet)"
IMPROVE_INSTRUCTION = (
    "You improve the instruction for one step of a program made of language-model calls. "
    "Earlier instructions are listed with the score the program reached with each, "
    "worst first, best last. Write a new instruction that will score higher than all of "
    "them: keep what the best ones do well and fix what they miss. Write only the "
    "instruction itself."
)
IMPROVE_SIGNATURE = "program, step, attempts, tip -> proposed_instruction"
SUMMARY_INSTRUCTION = (
    "Describe this dataset in a few sentences: what task it poses, what the inputs look "
    "like, and what a good answer looks like (length, form, style). Do not solve it."
)


def _one_node(name: str, signature: str, instruction: str, temperature: float | None) -> Graph:
    node = Predict(signature, instruction=instruction, temperature=temperature)
    return Graph(name).add(name, node)


async def summarize_data(
    trainset: Sequence[Example | Mapping[str, Any]],
    *,
    prompt_lm: LM | None = None,
    max_examples: int = 8,
    seed: int = 0,
) -> str:
    """A summary of the data: field statistics, plus the prompt model's description if given."""
    examples = as_examples(trainset)
    stats = describe_data(examples)
    if prompt_lm is None:
        return stats
    sample = shuffled(examples, seed)[:max_examples]
    text = "\n\n".join(_format_example(e) for e in sample)
    graph = _one_node("summarize", "examples -> summary", SUMMARY_INSTRUCTION, None)
    try:
        pred = await graph.run({"examples": text}, lm=prompt_lm)
    except Exception:  # a failed summary only loses context; the statistics remain
        return stats
    return f"{stats}\n{pred['summary']}"


def _format_example(example: Mapping[str, Any]) -> str:
    return "\n".join(f"{k}: {format_value(v)}" for k, v in example.items())


def format_demos(demos: Sequence[Mapping[str, Any]], limit: int = 3) -> str:
    """Demos as readable text, one block each (at most ``limit``)."""
    if not demos:
        return "(no examples available)"
    blocks = [f"Example {i + 1}:\n{_format_example(d)}" for i, d in enumerate(demos[:limit])]
    return "\n\n".join(blocks)


async def propose_instructions(
    graph: Graph,
    trainset: Sequence[Example | Mapping[str, Any]],
    *,
    prompt_lm: LM,
    n: int = 5,
    demos: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    seed: int = 0,
    data_summary: str | None = None,
    summarize: bool = True,
    include_original: bool = True,
    temperature: float | None = 1.0,
    concurrency: int = 8,
    tips: Sequence[str] = TIPS,
    history: Mapping[str, Sequence[tuple[str, float]]] | None = None,
) -> dict[str, list[str]]:
    """Propose candidate instructions for every LM node of ``graph``.

    Args:
        graph: The program; its structure grounds the proposals.
        trainset: Examples; a summary of them grounds the proposals.
        prompt_lm: The LM that writes instructions.
        n: Proposals asked for per predictor.
        demos: Successful demos per predictor path (from bootstrapping);
            labelled demos from the trainset are used where absent.
        seed: Picks the examples shown and the order of tips.
        data_summary: A ready summary of the data; built when None.
        summarize: Ask the prompt model for a description of the data (else statistics only).
        include_original: Put each predictor's current instruction first.
        temperature: Sampling temperature of the prompt model.
        concurrency: Proposals in flight at once.
        tips: Style hints rotated across proposals.
        history: Per predictor path, instructions tried before and the score
            each reached (:func:`instruction_scores` reads them from a search);
            shown to the prompt model so it can beat them.

    Returns:
        Per predictor path, distinct candidate instructions (the current one
        first when ``include_original``). Failed proposals are left out.
    """
    examples = as_examples(trainset)
    if data_summary is None:
        data_summary = await summarize_data(
            examples, prompt_lm=prompt_lm if summarize else None, seed=seed
        )
    program = describe_graph(graph)
    proposer = _one_node("propose", PROPOSE_SIGNATURE, PROPOSE_INSTRUCTION, temperature)
    rng = random.Random(seed)
    jobs: list[tuple[str, int, dict[str, Any]]] = []
    for path, predictor in graph.named_predictors():
        shown = list((demos or {}).get(path) or labeled_demos(predictor, shuffled(examples, seed)))
        offset = rng.randrange(len(tips)) if tips else 0
        for i in range(n):
            inputs = {
                "program": program,
                "step": describe_node(graph, path),
                "data_summary": data_summary,
                "examples": format_demos(shuffled(shown, seed + i)),
                "current_instruction": predictor.instruction,
                "earlier_instructions": format_history((history or {}).get(path, ())),
                "tip": tips[(offset + i) % len(tips)] if tips else "",
            }
            jobs.append((path, i, inputs))
    found = await _run_all(proposer, jobs, prompt_lm, concurrency)
    return _assemble(graph, found, include_original)


async def _run_all(
    proposer: Graph, jobs: Sequence[tuple[str, int, dict[str, Any]]], lm: LM, concurrency: int
) -> dict[str, dict[int, str]]:
    """Run every proposal job; ``{path: {index: instruction}}`` for those that succeeded."""
    found: dict[str, dict[int, str]] = {}
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(path: str, index: int, inputs: dict[str, Any]) -> None:
        async with limiter:
            text = await propose_one(proposer, inputs, lm=lm, sample=index)
        if text:
            found.setdefault(path, {})[index] = text

    async with anyio.create_task_group() as group:
        for path, index, inputs in jobs:
            group.start_soon(one, path, index, inputs)
    return found


async def propose_one(
    proposer: Graph, inputs: Mapping[str, Any], *, lm: LM, sample: int
) -> str | None:
    """One proposal from ``proposer`` (sample index ``sample``), or None if it failed."""
    try:
        with context(sample=sample):
            pred = await proposer.run(dict(inputs), lm=lm)
    except Exception:  # one failed proposal must not end the search; it is just absent
        return None
    text = str(pred.get("proposed_instruction", "")).strip()
    return text if usable_instruction(text) else None


MIN_INSTRUCTION_WORDS = 3


def usable_instruction(text: str) -> bool:
    """Whether a proposal reads like an instruction rather than a stray word or a field name.

    Small prompt models sometimes answer with a single word ("query"); such a
    proposal would only waste trials, so it is dropped.
    """
    return len(text.split()) >= MIN_INSTRUCTION_WORDS


def _assemble(
    graph: Graph, found: Mapping[str, Mapping[int, str]], include_original: bool
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path, predictor in graph.named_predictors():
        ordered = [found.get(path, {})[i] for i in sorted(found.get(path, {}))]
        candidates = [predictor.instruction, *ordered] if include_original else ordered
        out[path] = list(dict.fromkeys(c.strip() for c in candidates if c.strip()))
    return out


def format_history(attempts: Sequence[tuple[str, float]], limit: int = 8) -> str:
    """Scored earlier instructions for the proposal prompt, or a note that there are none."""
    return format_attempts(attempts, limit) if attempts else NO_HISTORY


def instruction_scores(
    space: SearchSpace, trials: Sequence[Trial]
) -> dict[str, list[tuple[str, float]]]:
    """Per predictor path, each instruction a search tried and its mean score.

    Minibatch trials and full evaluations are averaged together; instructions
    no trial chose are left out. This is what a search shows its prompt model
    when it proposes again (``history=`` of :func:`propose_instructions`).
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for dim in space.dims:
        if dim.slot != "instruction":
            continue
        scores: dict[int, list[float]] = {}
        for trial in trials:
            if dim.name in trial.config:
                scores.setdefault(trial.config[dim.name], []).append(trial.score)
        out[dim.path] = [(str(dim.options[i]), sum(v) / len(v)) for i, v in sorted(scores.items())]
    return out


def improver() -> Graph:
    """The graph that asks the prompt model to beat a list of scored instructions."""
    return _one_node("improve", IMPROVE_SIGNATURE, IMPROVE_INSTRUCTION, 1.0)


def format_attempts(attempts: Sequence[tuple[str, float]], limit: int = 8) -> str:
    """Scored instructions, worst first and best last (the best ``limit`` only)."""
    best = sorted(attempts, key=lambda a: a[1])[-limit:]
    return "\n\n".join(
        f"Instruction #{i + 1}:\n{text}\nScore: {score:.3f}" for i, (text, score) in enumerate(best)
    )


class COPRO:
    """Hill-climb each LM node's instruction with a prompt model.

    Round 0 proposes ``breadth`` instructions per node (grounded as in
    :func:`propose_instructions`) and scores each on the validation set, the
    other nodes held at their best so far. Each later round shows the prompt
    model the scored attempts, worst first and best last, and asks for
    ``breadth`` instructions that beat them. Nodes are tuned one after the
    other within a round; the best program seen is returned.

    Args:
        metric: ``metric(example, prediction, trace) -> float | bool``.
        prompt_lm: The LM that writes instructions.
        breadth: Candidates per node per round.
        depth: Rounds.
        valset: Examples to score on (the trainset when None).
        threshold: Score at or above which an example passes.
        concurrency: Examples in flight while scoring.
        lm: Default LM for the program's runs.
        seed: Picks the examples and tips shown to the prompt model.
        summarize: Ask the prompt model for a description of the data.
        run_dir: Write a run record (every scored instruction, the final program).

    Attributes:
        history: ``{"round", "path", "instruction", "score"}`` per scored candidate.
        best_score: The validation score of the returned program.
    """

    def __init__(
        self,
        metric: Metric,
        *,
        prompt_lm: LM,
        breadth: int = 4,
        depth: int = 2,
        valset: Sequence[Example | Mapping[str, Any]] | None = None,
        threshold: float = 1.0,
        concurrency: int = 16,
        lm: LM | None = None,
        seed: int = 0,
        summarize: bool = True,
        run_dir: str | Path | None = None,
    ) -> None:
        if breadth < 1 or depth < 1:
            raise ConfigError(f"COPRO needs breadth >= 1 and depth >= 1, got {breadth}, {depth}")
        self.metric = metric
        self.prompt_lm = prompt_lm
        self.breadth = breadth
        self.depth = depth
        self.valset = valset
        self.threshold = threshold
        self.concurrency = concurrency
        self.lm = lm
        self.seed = seed
        self.summarize = summarize
        self.run_dir = run_dir
        self.history: list[dict[str, Any]] = []
        self.best_score = 0.0
        self._cache: dict[tuple[str, ...], float] = {}

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Return a copy of ``graph`` with the best instructions found."""
        examples = as_examples(trainset)
        valset = as_examples(self.valset, what="valset") if self.valset is not None else examples
        recorder = RunRecorder.create(self.run_dir, kind="copro", config=self._config(graph))
        self.history, self._cache = [], {}
        best = graph.copy()
        self.best_score = await self._score(best, valset, recorder, 0, "", "(as given)")
        proposals = await propose_instructions(
            graph,
            examples,
            prompt_lm=self.prompt_lm,
            n=max(1, self.breadth - 1),
            seed=self.seed,
            summarize=self.summarize,
            concurrency=self.concurrency,
        )
        attempts: dict[str, list[tuple[str, float]]] = {p: [] for p in proposals}
        for round_ in range(self.depth):
            for path in proposals:
                if round_ == 0:
                    candidates = proposals[path]
                else:
                    candidates = await self._improve(best, path, attempts[path], round_)
                for text in candidates:
                    trial = best.with_parameters({f"{path}.instruction": text})
                    score = await self._score(trial, valset, recorder, round_, path, text)
                    attempts[path].append((text, score))
                    if score > self.best_score:
                        best, self.best_score = trial, score
        if recorder is not None:
            recorder.write_program(best)
            recorder.finish({"best_score": self.best_score, "scored": len(self.history)})
        return best

    async def _improve(
        self, best: Graph, path: str, attempts: list[tuple[str, float]], round_: int
    ) -> list[str]:
        tried = {text for text, _ in attempts}
        graph = improver()
        base = {
            "program": describe_graph(best),
            "step": describe_node(best, path),
            "attempts": format_attempts(attempts),
        }
        jobs = [
            (path, i, {**base, "tip": TIPS[(round_ + i) % len(TIPS)]}) for i in range(self.breadth)
        ]
        found = await _run_all(graph, jobs, self.prompt_lm, self.concurrency)
        texts = [found.get(path, {})[i] for i in sorted(found.get(path, {}))]
        return [t for t in dict.fromkeys(texts) if t not in tried]

    async def _score(
        self,
        graph: Graph,
        valset: list[Example],
        recorder: RunRecorder | None,
        round_: int,
        path: str,
        text: str,
    ) -> float:
        key = tuple(f"{p}\x00{pr.instruction}" for p, pr in graph.named_predictors())
        if key not in self._cache:
            result = await score_candidate(graph, valset, self)
            self._cache[key] = result.score
            if recorder is not None:
                recorder.append(
                    "trials.jsonl",
                    {
                        "round": round_,
                        "path": path,
                        "instruction": text,
                        "score": result.score,
                        "usage": result.usage,
                        "wall_time": result.wall_time,
                    },
                )
        row = {"round": round_, "path": path, "instruction": text, "score": self._cache[key]}
        self.history.append(row)
        return self._cache[key]

    def _config(self, graph: Graph) -> dict[str, Any]:
        return {
            "graph": graph.name,
            "metric": metric_name(self.metric),
            "breadth": self.breadth,
            "depth": self.depth,
            "seed": self.seed,
            "prompt_lm": self.prompt_lm.name,
            "threshold": self.threshold,
        }
