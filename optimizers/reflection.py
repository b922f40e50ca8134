"""What Reflect shows its reflection LM, and how it reads the answer.

For one LM node of the program, the reflection LM sees how the program is
wired, the node's current instruction, and for each example of a minibatch:
the node's inputs and outputs as the trace recorded them, the program's
result, the score, the metric's feedback on the whole prediction and the
feedback the metric aimed at that node. It answers with a new instruction and,
optionally, new values for the other slots it is offered (the node's
temperature and number of demos, the ``k`` of retrieval nodes), written as
``name=value`` pairs. Everything it proposes becomes a parameter change that
goes through :meth:`Graph.set_parameters`.

The per-example Pareto front (:func:`pareto_front_of`) decides which
candidates may be parents: every candidate that is best (ties included) on at
least one validation example, less those another candidate beats on a superset
of examples.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.parsing import format_value
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.base import demos_from_trace, labeled_demos
from rhizome.optimizers.describe import describe_graph, describe_node

if TYPE_CHECKING:
    from rhizome.engine.example import Example
    from rhizome.optimizers.evaluate import ExampleResult

__all__ = (
    "REFLECT_INSTRUCTION",
    "REFLECT_SIGNATURE",
    "blamed_node",
    "demo_pool",
    "dossier",
    "echoed",
    "offered_slots",
    "pareto_front_of",
    "read_settings",
    "reflector",
    "weighted_pick",
)


REFLECT_INSTRUCTION = (
    "You improve one step of a program made of language-model calls. You are shown how "
    "the program is wired, the step's current instruction, and examples of the step at "
    "work: what it received, what it produced, how the program's result was scored, and "
    "feedback on what went wrong, for the whole result and for this step. Work out why "
    "the step fails and write a new, self-contained instruction for it that fixes those "
    "failures and keeps what already works; include any facts about the task the "
    "feedback reveals. In settings, give new values for any of the adjustable settings "
    "listed as name=value pairs separated by commas, or 'none' to keep them."
)
REFLECT_SIGNATURE = (
    "program, step, current_instruction, examples, adjustable -> new_instruction, settings"
)
MAX_TEXT = 600


def reflector() -> Graph:
    """The one-node graph that asks the reflection LM for a better instruction."""
    node = Predict(REFLECT_SIGNATURE, instruction=REFLECT_INSTRUCTION, temperature=1.0)
    return Graph("reflect").add("reflect", node)


def _short(value: Any) -> str:
    text = format_value(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _aimed_at(node_feedback: Mapping[str, str], path: str) -> list[str]:
    """The feedback entries meant for predictor ``path`` (keyed by it or by its node)."""
    return [
        text
        for key, text in node_feedback.items()
        if text and (key == path or path.startswith(key + "."))
    ]


def dossier(results: Sequence[ExampleResult], path: str) -> str:
    """The minibatch as the reflection LM reads it, for predictor ``path``: a block per example."""
    blocks = []
    for number, r in enumerate(results, start=1):
        lines = [f"### Example {number} (score {r.score:.2f})"]
        calls = r.trace.lm_calls(path) if r.trace is not None else []
        if calls:
            call = calls[-1]
            lines += [f"Step input {k}: {_short(v)}" for k, v in call.inputs.items()]
            if call.outputs:
                lines += [f"Step output {k}: {_short(v)}" for k, v in call.outputs.items()]
            else:
                lines.append(f"Step output: (did not parse) {_short(call.reply)}")
        else:
            lines.append("Step: did not run for this example")
        if r.prediction is not None:
            lines.append(f"Program result: {_short(dict(r.prediction))}")
        elif r.error is not None:
            lines.append(f"Program failed: {_short(r.error.get('message', r.error))}")
        expected = r.example.labels()
        if expected:
            lines.append(f"Expected: {_short(expected)}")
        if r.feedback:
            lines.append(f"Feedback: {r.feedback}")
        lines += [f"Feedback for this step: {text}" for text in _aimed_at(r.node_feedback, path)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def blamed_node(
    results: Sequence[ExampleResult], paths: Sequence[str], threshold: float
) -> str | None:
    """The predictor path the metric's node feedback names most on failing examples, if any."""
    counts = dict.fromkeys(paths, 0)
    for r in results:
        if r.score >= threshold:
            continue
        for path in paths:
            counts[path] += bool(_aimed_at(r.node_feedback, path))
    best = max(counts.values(), default=0)
    return next((p for p in paths if counts[p] == best), None) if best > 0 else None


def demo_pool(
    graph: Graph,
    path: str,
    results: Sequence[ExampleResult],
    trainset: Sequence[Example],
    *,
    threshold: float,
    limit: int,
) -> list[dict[str, Any]]:
    """Demos the reflection may give node ``path``: from passing traces first, then labelled."""
    found: list[dict[str, Any]] = []
    for r in results:
        if r.score >= threshold and r.error is None and r.trace is not None:
            found += demos_from_trace(r.trace, [path])[path][:1]
    predictor = dict(graph.named_predictors())[path]
    found += labeled_demos(predictor, trainset)
    unique = {json.dumps(d, sort_keys=True, default=str): d for d in found}
    return list(unique.values())[:limit]


def offered_slots(
    graph: Graph, path: str, slots: Sequence[str], *, max_demos: int
) -> dict[str, str]:
    """The settings offered beside the instruction: parameter name -> how to read a value.

    ``max_demos`` is how many demos are at hand for the node (0: demos not offered).
    """
    params = graph.named_parameters()
    offered: dict[str, str] = {}
    if "temperature" in slots and f"{path}.temperature" in params:
        now = params[f"{path}.temperature"]
        offered[f"{path}.temperature"] = f"sampling temperature, 0 to 2 (now {now})"
    if "demos" in slots and f"{path}.demos" in params and max_demos > 0:
        now = len(params[f"{path}.demos"])
        offered[f"{path}.demos"] = (
            f"number of solved examples shown to the step, 0 to {max_demos} (now {now})"
        )
    if "k" in slots:
        for name, value in params.items():
            if name.endswith(".k") or name == "k":
                offered[name] = (
                    f"passages retrieved by {name[:-2] or 'the root'}, 1 to 20 (now {value})"
                )
    return offered


def describe_offer(offered: Mapping[str, str]) -> str:
    """The adjustable settings as lines for the prompt."""
    if not offered:
        return "none"
    return "\n".join(f"- {name}: {how}" for name, how in offered.items())


_PAIR = re.compile(r"([\w./-]+)\s*[=:]\s*([-\w.]+)")


def read_settings(
    text: str,
    offered: Mapping[str, str],
    *,
    demos: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The parameter changes named in the reflection LM's ``settings`` answer.

    Unknown names and values out of range are dropped: a small model's slip
    costs nothing but a missed change.
    """
    out: dict[str, Any] = {}
    for name, raw in _PAIR.findall(text):
        target = next((o for o in offered if o == name or o.endswith("." + name)), None)
        if target is None:
            continue
        value = _number(raw)
        if value is None:
            continue
        if target.endswith(".temperature") and 0 <= value <= 2:
            out[target] = round(value, 2)
        elif target.endswith(".k") and value == int(value) and 1 <= value <= 20:
            out[target] = int(value)
        elif target.endswith(".demos") and value == int(value) and 0 <= value <= len(demos):
            out[target] = [dict(d) for d in demos[: int(value)]]
    return out


def _number(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


def reflection_inputs(
    graph: Graph, path: str, instruction: str, examples_text: str, offered: Mapping[str, str]
) -> dict[str, str]:
    """The reflection graph's inputs for one node."""
    return {
        "program": describe_graph(graph),
        "step": describe_node(graph, path),
        "current_instruction": instruction,
        "examples": examples_text,
        "adjustable": describe_offer(offered),
    }


ECHO_RATIO = 0.8


def echoed(text: str, inputs: Mapping[str, str]) -> bool:
    """Whether a proposed instruction is too short or mostly a copy of a shown input.

    Small reflection models often answer with the program's description or
    the examples instead of an instruction; such a proposal is not worth
    scoring.
    """
    if len(text.split()) < MIN_WORDS:
        return True
    shown = [v for k, v in inputs.items() if k != "current_instruction"]
    return any(
        difflib.SequenceMatcher(None, text, value, autojunk=False).ratio() >= ECHO_RATIO
        or (len(text) > 40 and text in value)
        for value in shown
    )


MIN_WORDS = 3


def pareto_front_of(scores: Sequence[Sequence[float]]) -> dict[int, int]:
    """Candidates on the per-example front, each with how many examples it is best on.

    ``scores[c][i]`` is candidate ``c``'s score on validation example ``i``.
    A candidate is kept when it reaches the best score on at least one
    example and no other candidate reaches the best on a strict superset of
    its examples (among equal sets the earliest candidate stays).
    """
    if not scores:
        return {}
    n = len(scores[0])
    wins: dict[int, set[int]] = {c: set() for c in range(len(scores))}
    for i in range(n):
        best = max(s[i] for s in scores)
        for c, s in enumerate(scores):
            if s[i] == best:
                wins[c].add(i)
    front: dict[int, int] = {}
    for c, won in wins.items():
        if not won:
            continue
        beaten = any(
            d != c and (won < other or (won == other and d < c)) for d, other in wins.items()
        )
        if not beaten:
            front[c] = len(won)
    return front


def weighted_pick(front: Mapping[int, int], rng: random.Random) -> int:
    """A candidate from the front, drawn in proportion to the examples it is best on."""
    ordered = sorted(front)
    return rng.choices(ordered, weights=[front[c] for c in ordered])[0]


def changes_json(changes: Mapping[str, Any]) -> str:
    """A canonical text of a set of parameter changes, to compare candidates."""
    return json.dumps(changes, sort_keys=True, ensure_ascii=False, default=str)
