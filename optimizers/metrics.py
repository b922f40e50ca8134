"""Metrics: ``metric(example, prediction, trace) -> float | bool``.

A metric scores one prediction against its example; with the run's trace it
can also judge intermediate steps. Whether a score *passes* is always decided
by an explicit threshold (:func:`passes`), never by the truthiness of whatever
the metric returned.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from rhizome.engine.trace import Trace

__all__ = (
    "Metric",
    "Score",
    "all_of",
    "answer_in_passages",
    "call_metric",
    "call_metric_scored",
    "distinct_from_question",
    "exact_match",
    "mean",
    "metric_name",
    "metric_traces",
    "normalize_text",
    "numeric_match",
    "parse_number",
    "passes",
    "report_trace",
    "score_value",
    "token_f1",
    "token_f1_score",
)


_METRIC_TRACES: contextvars.ContextVar[list[Trace] | None] = contextvars.ContextVar(
    "rhizome_metric_traces", default=None
)


@dataclasses.dataclass(frozen=True)
class Score:
    """A metric's score with text feedback for optimizers that learn from it.

    Attributes:
        value: The score, 1.0 best and 0.0 worst (a bool counts as 1.0/0.0).
        feedback: What went wrong (or right) for the whole prediction, in words
            a reflection LM can act on ("expected 'Castmere', got 'Brindlewick'").
        node_feedback: Feedback aimed at single nodes, keyed by node path
            (``"hop1"``, ``"loop/body/query"``): "the query repeated the question".

    A metric may return a ``Score`` anywhere a float or bool is accepted.
    """

    value: float
    feedback: str = ""
    node_feedback: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool):
            object.__setattr__(self, "value", 1.0 if value else 0.0)
        elif not isinstance(value, int | float) or math.isnan(float(value)):
            raise TypeError(f"Score.value must be a bool or a number, not {value!r}")
        else:
            object.__setattr__(self, "value", float(value))
        object.__setattr__(self, "node_feedback", dict(self.node_feedback))


class Metric(Protocol):
    """A scoring function: 1.0 (or True) is best, 0.0 (or False) worst."""

    def __call__(
        self, example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> float | bool | Score:
        """Score ``prediction`` against ``example``."""
        ...


def score_value(value: object, *, metric_name: str = "metric") -> float:
    """Turn a metric's return value into a float, refusing anything but bool/int/float/Score."""
    if isinstance(value, Score):
        return value.value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and not math.isnan(float(value)):
        return float(value)
    raise TypeError(
        f"{metric_name} returned {type(value).__name__} {value!r}; a metric must return a "
        "bool, a number (float) or a Score"
    )


async def call_metric(
    metric: Callable[..., Any],
    example: Mapping[str, Any],
    prediction: Mapping[str, Any],
    trace: Trace | None,
) -> float:
    """Call a metric (sync, or async like the LLM judge) and return its score as a float."""
    return (await call_metric_scored(metric, example, prediction, trace)).value


async def call_metric_scored(
    metric: Callable[..., Any],
    example: Mapping[str, Any],
    prediction: Mapping[str, Any],
    trace: Trace | None,
) -> Score:
    """Call a metric and return its score as a :class:`Score`, feedback kept (empty for floats)."""
    value = metric(example, prediction, trace)
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, Score):
        return value
    return Score(score_value(value, metric_name=metric_name(metric)))


@contextlib.contextmanager
def metric_traces() -> Iterator[list[Trace]]:
    """Collect, for the block, the traces of LM runs that metrics make themselves.

    An evaluation scores each example inside this block and adds the collected
    traces (an LLM judge's runs) to its usage. Metrics report their runs with
    :func:`report_trace`.
    """
    traces: list[Trace] = []
    token = _METRIC_TRACES.set(traces)
    try:
        yield traces
    finally:
        _METRIC_TRACES.reset(token)


def report_trace(trace: Trace) -> None:
    """Count an LM run a metric made (a judge's verdict) toward the evaluation's usage.

    A no-op when no evaluation is collecting (:func:`metric_traces`).
    """
    traces = _METRIC_TRACES.get()
    if traces is not None:
        traces.append(trace)


def passes(value: object, threshold: float = 1.0, *, metric_name: str = "metric") -> bool:
    """Whether a metric value passes: ``score >= threshold`` (True counts as 1.0)."""
    return score_value(value, metric_name=metric_name) >= threshold


def normalize_text(text: object) -> str:
    """Lowercase, strip accents, punctuation, articles and extra whitespace (SQuAD style)."""
    s = unicodedata.normalize("NFKD", str(text))
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).lower()
    s = "".join(" " if ch in string.punctuation else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _answers(value: object) -> list[str]:
    if isinstance(value, list | tuple | set):
        return [str(v) for v in value]
    return [str(value)]


def _field(pred: Mapping[str, Any], field: str) -> object:
    if field not in pred:
        fields = ", ".join(sorted(pred)) or "none"
        raise KeyError(f"prediction has no field {field!r}; its fields are: {fields}")
    return pred[field]


def exact_match(field: str = "answer", label: str | None = None) -> Metric:
    """Normalised exact match of ``prediction[field]`` with ``example[label or field]``.

    The label may be a list of acceptable answers.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> bool:
        guess = normalize_text(_field(prediction, field))
        return any(guess == normalize_text(a) for a in _answers(example[label or field]))

    metric.__name__ = f"exact_match({field})"
    return metric


def token_f1_score(guess: str, gold: str) -> float:
    """Token-level F1 between two texts after normalisation."""
    g, t = normalize_text(guess).split(), normalize_text(gold).split()
    common = Counter(g) & Counter(t)
    overlap = sum(common.values())
    if not g or not t:
        return float(g == t)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(g), overlap / len(t)
    return 2 * precision * recall / (precision + recall)


def token_f1(field: str = "answer", label: str | None = None) -> Metric:
    """Best token F1 of ``prediction[field]`` against the label (or labels)."""

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> float:
        guess = str(_field(prediction, field))
        return max(token_f1_score(guess, a) for a in _answers(example[label or field]))

    metric.__name__ = f"token_f1({field})"
    return metric


def answer_in_passages(passages_field: str = "passages", label: str = "answer") -> Metric:
    """True when the normalised gold answer occurs in any retrieved passage.

    Looks in ``prediction[passages_field]`` if present, else in every node
    output called ``passages_field`` recorded in the trace.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> bool:
        texts = _collect(prediction, trace, passages_field)
        blob = " ".join(normalize_text(t) for t in texts)
        return any(normalize_text(a) in blob for a in _answers(example[label]))

    metric.__name__ = f"answer_in_passages({passages_field})"
    return metric


def _collect(prediction: Mapping[str, Any], trace: Trace | None, field: str) -> list[str]:
    if field in prediction:
        return [str(p) for p in _answers(prediction[field])]
    if trace is None:
        raise KeyError(f"prediction has no field {field!r} and no trace was given to look in")
    out: list[str] = []
    for record in trace.records:
        if field in record.outputs:
            out.extend(_answers(record.outputs[field]))
    return out


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE]-?\d+)?")


def parse_number(value: object) -> float | None:
    """The last number in a value (``"The answer is 1,234."`` -> 1234.0), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    found = _NUMBER.findall(str(value))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def numeric_match(field: str = "answer", label: str | None = None, *, tol: float = 1e-6) -> Metric:
    """True when the numbers in prediction and label agree within ``tol`` (relative)."""

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> bool:
        guess = parse_number(_field(prediction, field))
        gold = parse_number(example[label or field])
        if guess is None or gold is None:
            return False
        return math.isclose(guess, gold, rel_tol=tol, abs_tol=tol)

    metric.__name__ = f"numeric_match({field})"
    return metric


def all_of(*metrics: Callable[..., float | bool], threshold: float = 1.0) -> Metric:
    """A metric that passes only when every metric passes (scores 1.0 or 0.0)."""

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> bool:
        return all(passes(m(example, prediction, trace), threshold) for m in metrics)

    metric.__name__ = "all_of(" + ", ".join(metric_name(m) for m in metrics) + ")"
    return metric


def metric_name(fn: object) -> str:
    """A readable name for a metric callable."""
    return getattr(fn, "__name__", type(fn).__name__)


def distinct_from_question(node: str, field: str = "query", question: str = "question") -> Metric:
    """Trace metric: the node's output ``field`` must not merely repeat the question.

    Useful inside :func:`all_of` to reject hop-1 queries that copy the question.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> bool:
        if trace is None:
            return True
        produced = trace.node(node).outputs.get(field, "")
        return normalize_text(produced) != normalize_text(example[question])

    metric.__name__ = f"distinct_from_question({node}.{field})"
    return metric


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean, 0.0 for no values."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0
