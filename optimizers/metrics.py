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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from rhizome.engine.trace import Trace
from rhizome.optimizers.retrieved import Found, Search, read_passages, searches, short_list

__all__ = (
    "Metric",
    "Score",
    "accepted_answers",
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
    "retrieval_recall",
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

    def __float__(self) -> float:
        """The value, so ``float(metric(...))`` works as it did for plain numbers."""
        return self.value

    def __bool__(self) -> bool:
        """True when the value is not 0, as for a plain number.

        Whether a score *passes* is still decided by :func:`passes` and a
        threshold; this only keeps ``if metric(...)`` meaning what it meant for
        metrics that returned a bool.
        """
        return self.value != 0.0


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


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")


def normalize_text(text: object) -> str:
    """Lowercase, strip accents, punctuation, articles and extra whitespace (SQuAD style).

    Numbers keep their digits together: thousands separators are dropped
    (``"2,525"`` -> ``"2525"``, as DSPy does) and a decimal point between
    digits is kept (``"3.5"`` stays ``"3.5"``).
    """
    s = unicodedata.normalize("NFKD", str(text))
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).lower()
    s = _DECIMAL.sub("\x00", _THOUSANDS.sub("", s))
    s = "".join(" " if ch in string.punctuation else ch for ch in s).replace("\x00", ".")
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


def accepted_answers(
    example: Mapping[str, Any], label: str, aliases: str | None = None
) -> list[str]:
    """The answers ``example`` accepts: ``example[label]`` (one or a list), plus its aliases.

    Args:
        example: The labelled example.
        label: The field holding the answer, or a list of accepted answers.
        aliases: A field holding more accepted answers (one or a list); an
            example without it accepts the label alone.

    Raises:
        KeyError: The example has no ``label`` field (the message lists its fields).
    """
    if label not in example:
        fields = ", ".join(sorted(example)) or "none"
        raise KeyError(f"example has no label field {label!r}; its fields are: {fields}")
    found = _answers(example[label])
    if aliases is not None and example.get(aliases) is not None:
        found += _answers(example[aliases])
    return list(dict.fromkeys(found))


def _expected(answers: list[str]) -> str:
    if len(answers) == 1:
        return repr(answers[0])
    return "one of " + ", ".join(repr(a) for a in answers)


def exact_match(
    field: str = "answer", label: str | None = None, *, aliases: str | None = None
) -> Metric:
    """Normalised exact match of ``prediction[field]`` with any accepted answer.

    Args:
        field: The prediction's field to check.
        label: The example's field with the answer (``field`` when None); it
            may hold a list of accepted answers (the answer and its aliases).
        aliases: An example field listing further accepted answers
            (``exact_match(aliases="aliases")`` for TriviaQA-style data).

    Returns:
        A metric returning a :class:`Score` of 1.0 or 0.0 whose feedback says
        what was expected and what came back.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        raw = _field(prediction, field)
        answers = accepted_answers(example, label or field, aliases)
        guess = normalize_text(raw)
        if any(guess == normalize_text(a) for a in answers):
            return Score(1.0, f"Correct: {field} {str(raw)!r} matches the expected answer.")
        return Score(0.0, f"Wrong {field}: expected {_expected(answers)}, got {str(raw)!r}.")

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


def token_f1(
    field: str = "answer", label: str | None = None, *, aliases: str | None = None
) -> Metric:
    """Best token F1 of ``prediction[field]`` against any accepted answer.

    ``label`` and ``aliases`` are read as by :func:`exact_match`. The metric
    returns a :class:`Score` whose feedback names the closest expected answer,
    what came back, and the words missing from it or extra in it.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        guess = str(_field(prediction, field))
        answers = accepted_answers(example, label or field, aliases)
        best, gold = max((token_f1_score(guess, a), a) for a in answers)
        return Score(best, _f1_feedback(field, guess, gold, best))

    metric.__name__ = f"token_f1({field})"
    return metric


def _f1_feedback(field: str, guess: str, gold: str, f1: float) -> str:
    if f1 == 1.0:
        return f"Correct: {field} {guess!r} has the words of the expected answer."
    got, want = Counter(normalize_text(guess).split()), Counter(normalize_text(gold).split())
    parts = [f"{field} scored F1 {f1:.2f}: expected {gold!r}, got {guess!r}."]
    if want - got:
        parts.append("Missing words: " + ", ".join(sorted(want - got)) + ".")
    if got - want:
        parts.append("Extra words: " + ", ".join(sorted(got - want)) + ".")
    return " ".join(parts)


def answer_in_passages(
    passages_field: str = "passages", label: str = "answer", *, aliases: str | None = None
) -> Metric:
    """Whether any accepted answer occurs (normalised) in a retrieved passage.

    Looks in ``prediction[passages_field]`` if present, else in every node
    output called ``passages_field`` recorded in the trace. The :class:`Score`
    (1.0 or 0.0) says, when the answer was not found, which retrieval nodes
    searched with which queries and found what, and gives each of those nodes
    (and the LM node that wrote its query) its own feedback.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        answers = accepted_answers(example, label, aliases)
        wanted = [normalize_text(a) for a in answers]
        if passages_field in prediction:
            blob = " ".join(normalize_text(t) for t in _answers(prediction[passages_field]))
            ok = any(a in blob for a in wanted)
            return Score(ok, _answer_feedback(ok, answers, passages_field))
        if trace is None:
            raise KeyError(
                f"prediction has no field {passages_field!r} and no trace was given to look in"
            )
        hops = searches(trace, passages_field)
        texts = [normalize_text(f.text) for hop in hops for f in hop.found]
        ok = any(a in t for t in texts for a in wanted)
        notes = {} if ok else _blame_all(hops, f"none contains the answer {_expected(answers)}")
        return Score(ok, _answer_feedback(ok, answers, passages_field, hops), notes)

    metric.__name__ = f"answer_in_passages({passages_field})"
    return metric


def _answer_feedback(
    ok: bool, answers: list[str], field: str, hops: Sequence[Search] | None = None
) -> str:
    if ok:
        return f"The answer {_expected(answers)} is in the retrieved {field}."
    if hops is None:
        return f"The answer {_expected(answers)} is in none of the retrieved {field}."
    if not hops:
        return f"No node retrieved any {field}; the answer was {_expected(answers)}."
    found = "; ".join(_hop_summary(hop) for hop in hops)
    return f"The answer {_expected(answers)} is in none of the retrieved {field}. {found}."


def _hop_summary(hop: Search) -> str:
    if not hop.node:
        return f"found {short_list([f.name for f in hop.found])}"
    queries = " / ".join(repr(q) for q in hop.queries) or "(no query)"
    return f"{hop.node!r} searched {queries} and found {short_list([f.name for f in hop.found])}"


def _blame_all(hops: Sequence[Search], problem: str) -> dict[str, str]:
    """Feedback for each retrieval node (and the nodes that wrote its query) naming ``problem``."""
    notes: dict[str, str] = {}
    for hop in hops:
        _add_note(notes, hop.node, f"{_hop_summary(hop)}; {problem}.")
        for parent in hop.parents:
            _add_note(
                notes,
                parent,
                f"The query it wrote led {hop.node!r} to find "
                f"{short_list([f.name for f in hop.found])}; {problem}.",
            )
    return notes


def _add_note(notes: dict[str, str], node: str, text: str) -> None:
    notes[node] = f"{notes[node]}\n{text}" if node in notes else text


def retrieval_recall(
    label: str = "supporting", *, by: str = "title", passages_field: str | None = None
) -> Metric:
    """Fraction of an example's supporting documents that some retrieval node found.

    Args:
        label: The example field listing its supporting documents (titles, ids
            or texts; one or a list).
        by: What the label lists: ``"title"`` (a passage's ``title``
            metadata, or the ``"Title | text"`` prefix the indexer writes),
            ``"id"`` (the passage id, or the id of the document an indexed
            chunk was cut from), or ``"text"`` (the supporting text
            occurs in the passage, normalised).
        passages_field: Read passages from ``prediction[passages_field]`` when
            present there, and otherwise only from trace outputs of that name;
            None reads every retrieval node in the trace.

    Returns:
        A metric returning a :class:`Score` in [0, 1] whose feedback names each
        missed supporting document and the retrieval node blamed for it. Blame
        goes to the retrieval nodes that found no supporting document at all
        (they searched for the wrong thing); when every node found one, the
        miss is put to all of them. The LM nodes that wrote a blamed node's
        query get the same note.

    Raises:
        ValueError: ``by`` is not one of ``"title"``, ``"id"``, ``"text"``.
    """
    if by not in _KEYS:
        raise ValueError(f"retrieval_recall(by={by!r}): use one of {', '.join(_KEYS)}")

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        wanted = accepted_answers(example, label)
        hops = _recall_hops(prediction, trace, passages_field)
        hit = {w: [h.node for h in hops if any(_is(w, f, by) for f in h.found)] for w in wanted}
        missed = [w for w in wanted if not hit[w]]
        value = 1.0 - len(missed) / len(wanted) if wanted else 1.0
        if not missed:
            return Score(value, f"Every supporting document was retrieved: {short_list(wanted)}.")
        useless = [h for h in hops if h.node and not any(h.node in hit[w] for w in wanted)]
        blamed = useless or [h for h in hops if h.node]
        problem = f"supporting {short_list(missed)} not retrieved"
        notes = _blame_all(blamed, problem)
        text = f"Missed supporting {short_list(missed)} ({len(missed)} of {len(wanted)})"
        if blamed:
            text += "; blamed on " + ", ".join(repr(h.node) for h in blamed)
            text += ". " + "; ".join(_hop_summary(h) for h in hops)
        elif not hops:
            text += "; no retrieval node ran"
        return Score(value, text + ".", notes)

    metric.__name__ = f"retrieval_recall({label})"
    return metric


_KEYS = ("title", "id", "text")


def _recall_hops(
    prediction: Mapping[str, Any], trace: Trace | None, field: str | None
) -> list[Search]:
    if field is not None and field in prediction:
        return [Search(node="", found=read_passages(prediction[field]))]
    if trace is None:
        where = f"prediction has no field {field!r} and " if field else ""
        raise KeyError(f"{where}no trace was given to find the retrieved passages in")
    return searches(trace, field)


def _is(wanted: str, found: Found, by: str) -> bool:
    if by == "id":
        return wanted in (found.id, found.doc_id)
    if by == "title":
        return bool(found.title) and normalize_text(wanted) == normalize_text(found.title)
    return normalize_text(wanted) in normalize_text(found.text)


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
    """Whether the numbers in prediction and label agree within ``tol`` (relative).

    Returns a :class:`Score` (1.0 or 0.0) whose feedback gives the expected
    number and the one read from the prediction.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        raw = _field(prediction, field)
        guess = parse_number(raw)
        gold = parse_number(accepted_answers(example, label or field)[0])
        if gold is None:
            return Score(0.0, f"The label {example[label or field]!r} holds no number.")
        if guess is None:
            return Score(0.0, f"Expected the number {gold:g}; {field} {str(raw)!r} holds none.")
        if math.isclose(guess, gold, rel_tol=tol, abs_tol=tol):
            return Score(1.0, f"Correct: {field} gives {guess:g}.")
        return Score(0.0, f"Wrong {field}: expected {gold:g}, got {guess:g} (from {str(raw)!r}).")

    metric.__name__ = f"numeric_match({field})"
    return metric


def all_of(*metrics: Callable[..., Any], threshold: float = 1.0) -> Metric:
    """A metric that passes only when every metric passes (scores 1.0 or 0.0).

    The feedback of the metrics that failed (or of all, when every one passed)
    is joined, overall and per node.
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        values = [m(example, prediction, trace) for m in metrics]
        ok = [
            passes(v, threshold, metric_name=metric_name(m))
            for m, v in zip(metrics, values, strict=True)
        ]
        shown = [v for v, good in zip(values, ok, strict=True) if not good] or values
        scores = [v for v in shown if isinstance(v, Score)]
        notes: dict[str, str] = {}
        for score in scores:
            for node, text in score.node_feedback.items():
                _add_note(notes, node, text)
        feedback = " ".join(s.feedback for s in scores if s.feedback)
        return Score(all(ok), feedback, notes)

    metric.__name__ = "all_of(" + ", ".join(metric_name(m) for m in metrics) + ")"
    return metric


def metric_name(fn: object) -> str:
    """A readable name for a metric callable."""
    return getattr(fn, "__name__", type(fn).__name__)


def distinct_from_question(node: str, field: str = "query", question: str = "question") -> Metric:
    """Trace metric: the node's output ``field`` must not merely repeat the question.

    Useful inside :func:`all_of` to reject hop-1 queries that copy the
    question; the :class:`Score` tells that node so ("the query repeated the
    question").
    """

    def metric(
        example: Mapping[str, Any], prediction: Mapping[str, Any], trace: Trace | None = None
    ) -> Score:
        if trace is None:
            return Score(1.0)
        produced = trace.node(node).outputs.get(field, "")
        if normalize_text(produced) != normalize_text(example[question]):
            return Score(1.0)
        note = f"The {field} repeated the question ({str(produced)!r}) instead of narrowing it."
        return Score(0.0, f"{node!r}: {note}", {node: note})

    metric.__name__ = f"distinct_from_question({node}.{field})"
    return metric


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean, 0.0 for no values."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0
