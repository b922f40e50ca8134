"""What every optimizer shares: the protocol, and demos cut from traces.

An optimizer takes a graph and a trainset and returns a NEW graph with better
parameters; the input graph is never changed. Optimizers compose: the output
of one is a valid input of the next.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example

if TYPE_CHECKING:
    from rhizome.engine.call.predictor import Predictor
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.trace import Trace

__all__ = (
    "Optimizer",
    "as_examples",
    "check_same_shape",
    "demos_from_trace",
    "labeled_demo",
    "labeled_demos",
    "shuffled",
)


class Optimizer(Protocol):
    """Anything with ``async optimize(graph, trainset) -> Graph``."""

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Return a new, optimized copy of ``graph``."""
        ...


def as_examples(
    data: Sequence[Example | Mapping[str, Any]], *, what: str = "trainset"
) -> list[Example]:
    """Coerce dicts to Examples; refuse an empty set with a clear message."""
    out = [e if isinstance(e, Example) else Example(e) for e in data]
    if not out:
        raise ConfigError(f"the {what} is empty; pass at least one example")
    return out


def demos_from_trace(trace: Trace, paths: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per predictor path, the demos one successful trace offers.

    A demo is the inputs and parsed outputs of one successful LM call (final
    attempt only), intermediate fields and reasoning included.
    """
    out: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    for path in paths:
        for call in trace.lm_calls(path):
            if call.error is None and call.outputs:
                out[path].append({**call.inputs, **call.outputs})
    return out


def labeled_demo(predictor: Predictor, example: Example) -> dict[str, Any] | None:
    """A demo for ``predictor`` made of the example's matching fields, if it has enough.

    It needs at least one of the predictor's inputs and one of its outputs.
    """
    sig = predictor.signature
    demo = {k: v for k, v in example.items() if k in sig.inputs or k in sig.outputs}
    has_in = any(k in sig.inputs for k in demo)
    has_out = any(k in sig.outputs for k in demo)
    return demo if has_in and has_out else None


def labeled_demos(predictor: Predictor, examples: Iterable[Example]) -> list[dict[str, Any]]:
    """The :func:`labeled_demo` of every example that has one, in order."""
    return [d for e in examples if (d := labeled_demo(predictor, e)) is not None]


def check_same_shape(student: Graph, teacher: Graph) -> None:
    """Raise when the teacher's predictors do not match the student's paths and signatures."""
    s = {p: pr.signature.spec() for p, pr in student.named_predictors()}
    t = {p: pr.signature.spec() for p, pr in teacher.named_predictors()}
    if s != t:
        missing = sorted(set(s) - set(t))
        extra = sorted(set(t) - set(s))
        changed = sorted(p for p in set(s) & set(t) if s[p] != t[p])
        raise ConfigError(
            "the teacher graph must have the same LM nodes as the student; "
            f"missing in teacher: {missing}, extra in teacher: {extra}, "
            f"different signatures: {changed}"
        )


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    """A shuffled copy, deterministic for a seed."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
